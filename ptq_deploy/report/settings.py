"""``ReportSettings``: the constraints ``report`` recommends under, from the ``report`` command's options
and the experiment file's ``report:`` section (nested in ``suite.experiment.Experiment``).

``min_recovery`` applies to every quality measure (each task's primary metric: accuracy, perplexity, ...)
unless ``min_recovery_by_task`` names the task; a recovery is "candidate / baseline" (higher is better)
or "baseline / candidate" (lower is better), tested for non-inferiority on its 95% interval
(``report.noninferiority``). Precedence: the command line, then ``experiment.yaml``, then these defaults
(per task, a command-line value overrides the experiment's for that task only).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptq_deploy.errors import UsageError
from ptq_deploy.perf.config import check_slos
from ptq_deploy.report.fmt import num
from ptq_deploy.report.row import sig

Fraction = Annotated[float, Field(ge=0, le=1)]


class ReportSettings(BaseModel):
    """What a scheme must meet to be recommended (``report:`` in an experiment file)."""

    model_config = ConfigDict(extra="forbid")

    min_recovery: Fraction = Field(0.99, description="every quality measure: the lower bound of its recovery's 95% "
                                                     "interval must reach this fraction of the baseline (0.99 = 99%)")
    min_recovery_by_task: dict[str, Fraction] = Field(default_factory=dict,
                                                      description="per task (its primary metric), over min_recovery")
    max_memory_gb: float | None = Field(None, gt=0, description="weights held in memory, GB (1e9 bytes)")
    min_throughput: float | None = Field(None, ge=0, description="offline output tokens/s")
    slo: dict[str, float] = Field(default_factory=dict, description=(
        "latency targets of the throughput regime, p99 in ms: ttft, tpot, e2el (e.g. {ttft: 2000, tpot: 100}); "
        "each scheme's best load meeting them is read from perf's load sweep"))
    capacity_context: int = Field(4096, ge=1, description="the capacity regime: sequences of this many tokens "
                                                          "whose KV cache fits at once")

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: dict[str, float]) -> dict[str, float]:
        return check_slos(v)

    def threshold(self, task: str | None = None) -> float:
        """The minimum recovery of ``task`` (the default for every task without one)."""
        return self.min_recovery_by_task.get(task, self.min_recovery) if task else self.min_recovery

    def threshold_pct(self, task: str | None = None) -> float:
        return sig(self.threshold(task) * 100)

    def describe(self) -> str:
        rec = f"recovery ≥ {num(self.threshold_pct())}% on every quality measure"
        if self.min_recovery_by_task:
            rec += " (" + ", ".join(f"{t} ≥ {num(self.threshold_pct(t))}%" for t in self.min_recovery_by_task) + ")"
        parts = [rec + ", on the 95% interval's lower bound"]
        if self.max_memory_gb is not None:
            parts.append(f"weights ≤ {num(self.max_memory_gb)} GB")
        if self.min_throughput is not None:
            parts.append(f"throughput ≥ {num(self.min_throughput)} tok/s")
        return "; ".join(parts)

    def describe_slo(self) -> str:
        return ", ".join(f"{k} p99 ≤ {num(v)} ms" for k, v in self.slo.items()) or "none (the throughput regime reads each curve's peak)"

    def override(self, min_recovery: float | None = None, min_recovery_by_task: dict[str, float] | None = None,
                 max_memory_gb: float | None = None, min_throughput: float | None = None,
                 slo: dict[str, float] | None = None, capacity_context: int | None = None) -> "ReportSettings":
        """These settings with each given value replacing its own (per task for ``min_recovery_by_task``, per
        target for ``slo``)."""
        data = self.model_dump()
        given = {"min_recovery": min_recovery, "max_memory_gb": max_memory_gb, "min_throughput": min_throughput,
                 "capacity_context": capacity_context}
        data.update({k: v for k, v in given.items() if v is not None})
        data["min_recovery_by_task"] = {**self.min_recovery_by_task, **(min_recovery_by_task or {})}
        data["slo"] = {**self.slo, **(slo or {})}
        return ReportSettings.model_validate(data)

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """Refuse a per-task constraint naming a task the results do not hold ("Available: ...")."""
        known = sorted(set(tasks))
        for t in self.min_recovery_by_task:
            if t not in known:
                close = difflib.get_close_matches(t, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UsageError(f"min-recovery for {t}: no such task in the results{hint}. "
                                 f"Available: {', '.join(known) or 'none'}")


def _fraction(text: str, spec: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0 <= x <= 1:
        raise UsageError(f"--min-recovery {spec!r}: expected a fraction of the baseline, e.g. 0.97 (= 97%) "
                         "or TASK=0.97")
    return x


def parse_min_recovery(specs: Sequence[str] | None) -> tuple[float | None, dict[str, float]]:
    """``--min-recovery`` values -> ``(default for every task or None, {task: fraction})``.

    ``0.97`` sets the default, ``austen_ppl=0.97`` one task's; the option repeats, the last value wins.
    """
    default, by_task = None, {}
    for spec in specs or ():
        task, sep, value = spec.partition("=")
        if sep:
            if not task.strip():
                raise UsageError(f"--min-recovery {spec!r}: the task name is missing (TASK=0.97)")
            by_task[task.strip()] = _fraction(value, spec)
        else:
            default = _fraction(spec, spec)
    return default, by_task
