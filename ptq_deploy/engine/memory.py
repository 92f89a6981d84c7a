"""The memory one engine holds, measured around its load: its own, not its host process's.

CPU: the RSS the load added to this process tree (after - before; a suite process that also holds
lm-eval and earlier engines keeps its own baseline out). GPU: NVML's per-process memory of the
engine's processes (this process and its children). Next to it, vLLM's own split into weights and
KV cache where it logs one.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import threading
import time

from pydantic import BaseModel

from ptq_deploy.hardware import nvml

GIB = 2**30
RSS_DELTA = "engine's own: RSS delta over the process before loading"
GPU_PROCESS = "engine's own: NVML per-process GPU memory of the engine's processes"
GPU_DELTA = "engine's own: GPU memory used, delta over before loading (NVML lists no process of ours)"


_EXCLUDED: set[int] = set()


def exclude(pid: int) -> None:
    """Leave ``pid`` and its descendants out of every process tree measured here: a helper process that is not
    part of what is measured (the compress environment's server, idle while perf runs)."""
    _EXCLUDED.add(pid)


def tree_pids(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants, less the excluded ones."""
    import psutil

    try:
        p = psutil.Process(pid or os.getpid())
        pids = [p.pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []
    left_out = set()
    for q in _EXCLUDED.intersection(pids):
        left_out.add(q)
        with contextlib.suppress(psutil.Error):
            left_out.update(c.pid for c in psutil.Process(q).children(recursive=True))
    return [q for q in pids if q not in left_out]


def tree_rss(pid: int | None = None) -> int:
    """RSS of ``pid`` (default: this process) plus all its descendants, in bytes."""
    return rss_of(tree_pids(pid))


def rss_of(pids: list[int]) -> int:
    import psutil

    total = 0
    for q in pids:
        try:
            total += psutil.Process(q).memory_info().rss
        except psutil.Error:
            continue
    return total


class EngineMemory(BaseModel):
    source: str  # how ``own_bytes`` was measured (RSS_DELTA | GPU_PROCESS | GPU_DELTA)
    own_bytes: int | None
    rss_before_load_bytes: int
    rss_after_load_bytes: int
    gpu_process_bytes: int | None = None  # NVML, the engine's processes, after load
    weights_bytes_vllm: int | None = None  # vLLM's "Model loading took X GiB memory" (GPU)
    kv_cache_bytes_vllm: int | None = None  # vLLM's KV-cache memory: "Available KV cache memory" / CPU's "(X/Y) GiB"


class Baseline(BaseModel):
    """This process tree's RSS (and the GPUs' used memory) just before a load."""

    rss_bytes: int
    gpu_used_bytes: int | None = None


def baseline(gpus: bool) -> Baseline:
    return Baseline(rss_bytes=tree_rss(), gpu_used_bytes=nvml.memory_used() if gpus else None)


def parse_memory_log(text: str) -> dict[str, int | None]:
    """vLLM's weights / KV-cache memory split from its load log (GiB figures, last one wins)."""
    def gib(pat: str) -> int | None:
        m = re.findall(pat, text)
        return int(float(m[-1]) * GIB) if m else None

    return {"weights_bytes_vllm": gib(r"Model loading took ([\d.]+) GiB memory"),
            "kv_cache_bytes_vllm": gib(r"Available KV cache memory: ([\d.]+) GiB")
            or gib(r"set \(([\d.]+)/[\d.]+\) GiB for KV cache")}


def measure(base: Baseline, gpus: bool, log_text: str = "") -> EngineMemory:
    """After a load: the engine's own memory. GPU: NVML per process, else the device-wide delta; CPU: the RSS
    the load added."""
    after = tree_rss()
    own, source, gpu = max(after - base.rss_bytes, 0), RSS_DELTA, None
    if gpus:
        gpu = nvml.process_memory(tree_pids())
        used = nvml.memory_used() if gpu is None else None
        if gpu is not None:
            own, source = gpu, GPU_PROCESS
        elif used is not None and base.gpu_used_bytes is not None:
            own, source = max(used - base.gpu_used_bytes, 0), GPU_DELTA
    return EngineMemory(source=source, own_bytes=own, rss_before_load_bytes=base.rss_bytes,
                        rss_after_load_bytes=after, gpu_process_bytes=gpu, **parse_memory_log(log_text))


class PeakSampler:
    """Samples the process-tree RSS (and GPU memory) in a thread; ``.peak_rss``/``.peak_gpu``, ``.n``, and the
    first sample (taken on entering) as ``.first_rss``/``.first_gpu``, so a peak always spans its starting point
    (RSS can fall between two separate readings: freed pages go back to the OS).

    ``high_water_mark`` (this process only): also the kernel's peak RSS where it rose during the block, which
    catches a spike between samples; it covers the whole process life, so a peak reached earlier (an
    in-process run before this one) is not counted.

    The sampler runs beside what perf times (an in-process engine's Python loop, or the serving client on the
    cores the server uses), so a sample must cost next to nothing: finding the descendants scans every
    process on the machine (~1 ms of CPU; 2% of a core at 20 samples/s), so the tree is found again only every
    ``refresh_s``; each sample reads the known processes' RSS."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05, gpu: bool = False,
                 high_water_mark: bool = False, refresh_s: float = 1.0):
        self.pid, self.interval, self.gpu, self.high_water_mark = pid, interval_s, gpu, high_water_mark
        self.refresh_s, self._pids, self._pids_at = refresh_s, [], float("-inf")
        self._maxrss0 = 0
        self.peak_rss, self.peak_gpu, self.n = 0, None, 0
        self.first_rss, self.first_gpu = 0, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self, refresh: bool = False):
        if refresh or time.monotonic() - self._pids_at >= self.refresh_s:
            self._pids, self._pids_at = tree_pids(self.pid), time.monotonic()
        rss = rss_of(self._pids)
        g = nvml.memory_used() if self.gpu else None
        if self.n == 0:
            self.first_rss, self.first_gpu = rss, g
        self.peak_rss = max(self.peak_rss, rss)
        if g is not None:
            self.peak_gpu = max(self.peak_gpu or 0, g)
        self.n += 1

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.high_water_mark:
            self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)
        self._sample(refresh=True)
        if self.high_water_mark and (maxrss := resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) > self._maxrss0:
            self.peak_rss = max(self.peak_rss, maxrss * 1024)  # KiB on Linux
        return False
