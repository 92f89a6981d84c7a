"""What machine are we on: CPU model and ISA flags, NVIDIA GPUs (via NVML), memory."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.hardware import nvml


class GPUInfo(nvml.DeviceReading):
    """NVML's readings of a GPU (or a named device's datasheet figures) and its spec peak bandwidth."""

    bandwidth_gbps: float | None = None  # spec peak memory bandwidth
    bandwidth_source: str | None = None  # "NVML: ..." (a detected GPU) | "datasheet" (a named --device)

    @property
    def cc(self) -> float:
        return self.compute_capability[0] + self.compute_capability[1] / 10


class CPUInfo(BaseModel):
    model: str
    arch: str
    cores: int
    flags: list[str]

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return any(f.startswith("amx") for f in self.flags)

    @property
    def isa(self) -> str:
        if self.amx:
            return "AMX"
        if self.avx512:
            return "AVX-512"
        if "avx2" in self.flags:
            return "AVX2"
        return self.arch


class HardwareInfo(BaseModel):
    cpu: CPUInfo
    memory_total_bytes: int
    gpus: list[GPUInfo] = []

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def fingerprint(self) -> str:
        """What decides which vLLM kernels run: the first GPU's name and compute capability, else the CPU's
        model, architecture and ISA flags. A readable slug and a short hash (``cpu-avx2-1a2b3c4d``)."""
        if self.gpus:
            g = self.gpus[0]
            facts = [g.name, list(g.compute_capability)]
            slug = f"{g.name}-cc{g.compute_capability[0]}{g.compute_capability[1]}"
        else:
            facts = [self.cpu.model, self.cpu.arch, self.cpu.flags]
            slug = f"cpu-{self.cpu.isa}"
        digest = hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:8]
        return f"{re.sub(r'[^a-z0-9]+', '-', slug.lower()).strip('-')}-{digest}"

    def summary(self) -> str:
        if self.gpus:
            g = self.gpus[0]
            bw = f", {g.bandwidth_gbps:.0f} GB/s" if g.bandwidth_gbps else ""
            return (f"{len(self.gpus)}x {g.name} (cc {g.compute_capability[0]}.{g.compute_capability[1]}, "
                    f"{g.memory_total_bytes / 2**30:.0f} GiB{bw})")
        return f"CPU {self.cpu.model} ({self.cpu.isa}, {self.cpu.cores} cores, {self.memory_total_bytes / 2**30:.0f} GiB)"


_INTERESTING_FLAGS = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                      "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "sse4_2"}


def detect_cpu() -> CPUInfo:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(set(line.split(":", 1)[1].split()) & _INTERESTING_FLAGS)
    except OSError:
        pass
    return CPUInfo(model=model, arch=platform.machine(), cores=os.cpu_count() or 1, flags=flags)


NVML_BANDWIDTH = "NVML: max memory clock x bus width x 2"


def detect_gpus() -> list[GPUInfo]:
    """NVIDIA GPUs through NVML, each with its spec peak bandwidth; [] when there is no driver or no pynvml."""
    gpus = []
    for d in nvml.devices():
        bw = nvml.spec_bandwidth_gbps(d.memory_clock_max_mhz, d.memory_bus_width_bits)
        gpus.append(GPUInfo(**d.model_dump(), bandwidth_gbps=bw, bandwidth_source=NVML_BANDWIDTH if bw else None))
    return gpus


def total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def detect() -> HardwareInfo:
    return HardwareInfo(cpu=detect_cpu(), memory_total_bytes=total_memory(), gpus=detect_gpus())
