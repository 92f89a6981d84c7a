"""NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py): devices, spec bandwidth, per-process memory, energy.

Every question opens its own NVML session (``session``) and answers ``None`` / ``[]`` where there is
no pynvml, no driver, or the GPU does not support the call, so callers need no GPU to run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

NO_NVML = "not measured: no NVML (no NVIDIA driver or no pynvml)"


class DeviceReading(BaseModel):
    """What NVML says about one GPU (the raw readings; arithmetic in ``spec_bandwidth_gbps``)."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    memory_used_bytes: int | None = None
    memory_clock_max_mhz: int | None = None  # nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_MEM)
    memory_bus_width_bits: int | None = None  # nvmlDeviceGetMemoryBusWidth(h)


def spec_bandwidth_gbps(memory_clock_max_mhz: int | None, bus_width_bits: int | None) -> float | None:
    """Spec peak memory bandwidth: max memory clock (MHz) x 1e6 x bus width (bits) / 8 x 2 (double data rate)."""
    if not memory_clock_max_mhz or not bus_width_bits:
        return None
    return memory_clock_max_mhz * 1e6 * bus_width_bits / 8 * 2 / 1e9


@contextlib.contextmanager
def session() -> Iterator[Any]:
    """``pynvml`` initialised for the block, or ``None`` where NVML cannot start."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # library not found / driver not loaded: no GPU here
        yield None
        return
    try:
        yield pynvml
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _call(nv, fn: str, *args):
    """One NVML call; ``None`` when this GPU or driver does not support it."""
    try:
        return getattr(nv, fn)(*args)
    except nv.NVMLError:
        return None


def _handles(nv) -> list:
    return [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]


def devices() -> list[DeviceReading]:
    """Every NVIDIA GPU NVML sees; ``[]`` without NVML."""
    with session() as nv:
        if nv is None:
            return []
        out = []
        for i, h in enumerate(_handles(nv)):
            name = nv.nvmlDeviceGetName(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append(DeviceReading(
                index=i, name=name.decode() if isinstance(name, bytes) else name,
                compute_capability=tuple(nv.nvmlDeviceGetCudaComputeCapability(h)),
                memory_total_bytes=int(mem.total), memory_used_bytes=int(mem.used),
                memory_clock_max_mhz=_call(nv, "nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_MEM),
                memory_bus_width_bits=_call(nv, "nvmlDeviceGetMemoryBusWidth", h)))
        return out


def memory_used() -> int | None:
    """Bytes used on all GPUs, by every process (None without NVML)."""
    with session() as nv:
        if nv is None:
            return None
        return sum(int(nv.nvmlDeviceGetMemoryInfo(h).used) for h in _handles(nv))


def process_memory(pids: Iterable[int]) -> int | None:
    """GPU memory the processes ``pids`` hold, summed over every GPU (NVML's per-process accounting).

    ``None`` without NVML, where the driver does not report per-process memory, or where none of
    ``pids`` is listed (a container sees other PIDs than the driver)."""
    want = set(pids)
    with session() as nv:
        if nv is None:
            return None
        mine = [p for h in _handles(nv) for p in (_call(nv, "nvmlDeviceGetComputeRunningProcesses", h) or [])
                if p.pid in want]
        return sum(int(p.usedGpuMemory or 0) for p in mine) if mine else None


def energy_mj() -> dict[int, int] | None:
    """Each GPU's total energy counter since the driver loaded (mJ); None without NVML or a counter."""
    with session() as nv:
        if nv is None:
            return None
        out = {}
        for i, h in enumerate(_handles(nv)):
            v = _call(nv, "nvmlDeviceGetTotalEnergyConsumption", h)
            if v is not None:
                out[i] = int(v)
        return out or None
