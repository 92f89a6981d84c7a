"""Memory of the perf engine: the engine's own (``engine.memory``), peaks of its process tree (psutil) and of
the GPUs (NVML), and the KV-cache capacity vLLM allocated, as tokens and as sequences of a given context."""

from __future__ import annotations

import threading

from pydantic import BaseModel

from ptq_deploy import nvml
from ptq_deploy.engine.memory import EngineMemory, tree_rss

# contexts the capacity is reported at (what deployment questions start from)
CAPACITY_CONTEXTS = (4096, 32768)


class PeakSampler:
    """Samples the process-tree RSS (and GPU memory) in a thread; ``.peak_rss``/``.peak_gpu``, ``.n``, and the
    first sample (taken on entering) as ``.first_rss``/``.first_gpu``, so a peak always spans its starting point
    (RSS can fall between two separate readings: freed pages go back to the OS)."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05, gpu: bool = False):
        self.pid, self.interval, self.gpu = pid, interval_s, gpu
        self.peak_rss, self.peak_gpu, self.n = 0, None, 0
        self.first_rss, self.first_gpu = 0, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        rss = tree_rss(self.pid)
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
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)
        self._sample()
        return False


class MemoryStats(BaseModel):
    process: str  # which process tree the RSS figures are of
    rss_after_load_bytes: int
    peak_rss_bytes: int
    rss_samples: int
    gpu_after_load_bytes: int | None = None  # every process's, all GPUs
    peak_gpu_bytes: int | None = None
    engine: EngineMemory | None = None  # the engine's own memory (its ``source`` says how it was measured)
    kv_cache_tokens: int | None = None  # capacity vLLM allocated (blocks x block size)
    kv_cache_blocks: int | None = None
    kv_cache_block_size: int | None = None
    kv_cache_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    weight_bytes_checkpoint: int | None = None  # safetensors bytes on disk
    concurrent_sequences_at: dict[int, int] = {}  # context tokens -> sequences whose KV fits at once
    vllm_max_concurrency: float | None = None  # vLLM's own figure, at max_model_len
    capacity_note: str | None = None  # what decided the KV-cache space


def concurrent_sequences(blocks: int, block_size: int, contexts=CAPACITY_CONTEXTS) -> dict[int, int]:
    """Sequences of each context length whose KV cache fits in ``blocks`` at once (whole blocks per sequence)."""
    return {c: blocks // -(-c // block_size) for c in contexts}


def capacity_note(resolved) -> str:
    if resolved.gpus:
        return (f"KV space: gpu_memory_utilization {resolved.gpu_memory_utilization} of the GPU, minus weights and "
                "activations (a smaller checkpoint leaves more)")
    return f"KV space: VLLM_CPU_KVCACHE_SPACE={resolved.cpu_kvcache_space_gib} GiB (fixed on CPU, whatever the weights)"
