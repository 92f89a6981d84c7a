"""Energy per output token: NVML's total energy counter (mJ since the driver loaded) read around each timed
phase; the joules of a phase over the output tokens it generated, summarised over phases.

The counter is the whole GPU's (other processes' work counts too) and is summed over every GPU NVML
sees. Without NVML (a CPU host) nothing is measured and the result says so.
"""

from __future__ import annotations

import contextlib

from pydantic import BaseModel

from ptq_deploy.hardware import nvml
from ptq_deploy.stats import Summary

SOURCE = "NVML total energy counter (nvmlDeviceGetTotalEnergyConsumption), GPUs {gpus}"


class Energy(BaseModel):
    source: str  # SOURCE, or why nothing was measured
    joules: Summary | None = None  # per timed phase
    joules_per_output_token: Summary | None = None


def phase_joules(before: dict[int, int], after: dict[int, int]) -> float:
    """Joules between two readings of every GPU's counter (mJ), over the GPUs read both times."""
    return sum(after[i] - before[i] for i in before if i in after) / 1e3


class EnergyMeter:
    """``with meter.phase(): ...`` around each timed phase; ``result(output tokens of each phase)``."""

    def __init__(self):
        self.readings: list[tuple[dict[int, int], dict[int, int]]] = []
        self.available = nvml.energy_mj() is not None

    @contextlib.contextmanager
    def phase(self):
        before = nvml.energy_mj() if self.available else None
        yield
        after = nvml.energy_mj() if before is not None else None
        if before is not None and after is not None:
            self.readings.append((before, after))

    def result(self, output_tokens: list[int]) -> Energy:
        if not self.available:
            return Energy(source=nvml.NO_NVML)
        return energy(self.readings, output_tokens)


def energy(readings: list[tuple[dict[int, int], dict[int, int]]], output_tokens: list[int]) -> Energy:
    """Joules and joules/output token of each phase (readings: counter before and after, mJ per GPU)."""
    if not readings:
        return Energy(source="not measured: the GPUs report no energy counter")
    joules = [phase_joules(b, a) for b, a in readings]
    gpus = ",".join(str(i) for i in sorted(readings[0][0]))
    return Energy(source=SOURCE.format(gpus=gpus), joules=Summary.of(joules, "J"),
                  joules_per_output_token=Summary.of([j / n for j, n in zip(joules, output_tokens) if n], "J/token"))
