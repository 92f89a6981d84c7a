"""Memory of the perf engine: the engine's own (``engine.memory``), peaks of its process tree (psutil) and of
the GPUs (NVML), and the KV-cache capacity vLLM allocated, as tokens and as sequences of a given context."""

from __future__ import annotations

from pydantic import BaseModel

from ptq_deploy.engine.memory import EngineMemory

# contexts the capacity is reported at (what deployment questions start from)
CAPACITY_CONTEXTS = (4096, 32768)


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
