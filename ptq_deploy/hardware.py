"""What machine are we on: CPU model and ISA flags, NVIDIA GPUs (via pynvml), memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pydantic import BaseModel


class GPUInfo(BaseModel):
    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    memory_used_bytes: int | None = None

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

    def summary(self) -> str:
        if self.gpus:
            g = self.gpus[0]
            return (f"{len(self.gpus)}x {g.name} (cc {g.compute_capability[0]}.{g.compute_capability[1]}, "
                    f"{g.memory_total_bytes / 2**30:.0f} GiB)")
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


def detect_gpus() -> list[GPUInfo]:
    """NVIDIA GPUs through NVML; an empty list when there is no driver or no pynvml."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(GPUInfo(index=i, name=name, compute_capability=(major, minor),
                                memory_total_bytes=int(mem.total), memory_used_bytes=int(mem.used)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def gpu_memory_used() -> list[int]:
    """Per-GPU used bytes (for peak-memory sampling); [] without NVML."""
    return [g.memory_used_bytes or 0 for g in detect_gpus()]


def total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def detect() -> HardwareInfo:
    return HardwareInfo(cpu=detect_cpu(), memory_total_bytes=total_memory(), gpus=detect_gpus())
