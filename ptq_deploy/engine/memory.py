"""The memory one engine holds, measured around its load: its own, not its host process's.

CPU: the RSS the load added to this process tree (after - before; a suite process that also holds
lm-eval and earlier engines keeps its own baseline out). GPU: NVML's per-process memory of the
engine's processes (this process and its children). Next to it, vLLM's own split into weights and
KV cache where it logs one.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel

from ptq_deploy import nvml

GIB = 2**30
RSS_DELTA = "engine's own: RSS delta over the process before loading"
GPU_PROCESS = "engine's own: NVML per-process GPU memory of the engine's processes"
GPU_DELTA = "engine's own: GPU memory used, delta over before loading (NVML lists no process of ours)"


def tree_pids(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants."""
    import psutil

    try:
        p = psutil.Process(pid or os.getpid())
        return [p.pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


def tree_rss(pid: int | None = None) -> int:
    """RSS of ``pid`` (default: this process) plus all its descendants, in bytes."""
    import psutil

    total = 0
    for q in tree_pids(pid):
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
