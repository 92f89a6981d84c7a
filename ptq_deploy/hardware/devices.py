"""Named GPUs for ``--device NAME`` what-ifs: ``data/devices.yaml`` (datasheet cc, memory, bandwidth).

``get(name)`` matches a name or an alias exactly (case-insensitive) and answers "Available: ..." on a
miss; ``gpu(name)`` is the ``GPUInfo`` such a device would report. A GPU on this machine is never
looked up here: ``hardware.detect_gpus`` reads it from NVML.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

import yaml
from pydantic import BaseModel, ConfigDict

from ptq_deploy import DATA_DIR
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import GPUInfo

DEVICES_FILE = DATA_DIR / "devices.yaml"
# the other values ``--device`` accepts
LOCAL_CHOICES = ("local", "cpu")


class DeviceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    name: str
    compute_capability: tuple[int, int]
    memory_gib: float
    bandwidth_gbps: float
    aliases: list[str] = []
    source: str

    def gpu(self) -> GPUInfo:
        return GPUInfo(index=0, name=self.name, compute_capability=self.compute_capability,
                       memory_total_bytes=int(self.memory_gib * 2**30), bandwidth_gbps=self.bandwidth_gbps,
                       bandwidth_source=f"datasheet: {self.source}")


@lru_cache(maxsize=1)
def registry() -> dict[str, DeviceSpec]:
    data = yaml.safe_load(DEVICES_FILE.read_text())
    return {key: DeviceSpec(key=key, **spec) for key, spec in data.items()}


def get(name: str) -> DeviceSpec:
    reg = registry()
    key = name.lower()
    for spec in reg.values():
        if key == spec.key or key in spec.aliases:
            return spec
    names = [*reg, *(a for s in reg.values() for a in s.aliases)]
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UsageError(f"unknown --device {name!r}{hint}; Available: {', '.join([*LOCAL_CHOICES, *reg])}")
