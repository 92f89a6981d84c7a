"""Memory of the engine process(es): RSS of a process tree (psutil) and GPU memory (pynvml)."""

from __future__ import annotations

import os
import threading

from pydantic import BaseModel


def tree_rss(pid: int | None = None) -> int:
    """RSS of ``pid`` (default: this process) plus all its descendants, in bytes."""
    import psutil

    try:
        p = psutil.Process(pid or os.getpid())
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            continue
    return total


def gpu_used() -> int | None:
    """Bytes used on all NVIDIA GPUs (None without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return sum(int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used)
                   for i in range(pynvml.nvmlDeviceGetCount()))
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


class PeakSampler:
    """Samples the process-tree RSS (and GPU memory) in a thread; ``.peak_rss``/``.peak_gpu``, ``.n``."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05, gpu: bool = False):
        self.pid, self.interval, self.gpu = pid, interval_s, gpu
        self.peak_rss, self.peak_gpu, self.n = 0, None, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
        if self.gpu:
            g = gpu_used()
            if g is not None:
                self.peak_gpu = max(self.peak_gpu or 0, g)
        self.n += 1

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)
        self._sample()
        return False


class MemoryStats(BaseModel):
    process: str  # which process tree
    rss_after_load_bytes: int
    peak_rss_bytes: int
    rss_samples: int
    gpu_after_load_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    kv_cache_tokens: int | None = None  # capacity vLLM allocated (blocks x block size)
    kv_cache_blocks: int | None = None
    kv_cache_block_size: int | None = None
    kv_cache_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    weight_bytes_checkpoint: int | None = None  # safetensors bytes on disk
