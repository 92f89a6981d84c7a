"""Engine settings: one ``EngineConfig`` nested wherever vLLM is loaded (perf, eval, experiments).

A baseline and every candidate are loaded with the same ``EngineConfig``; ``resolve`` turns it into
a ``ResolvedEngine`` for one checkpoint on one machine (nothing left to "auto"), the only input of
``ptq_deploy.engine.args``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ptq_deploy.engine.memory import EngineMemory

MAX_MODEL_LEN_CAP = 2048
# engine fields that version-1 perf/eval configs kept at their top level
V1_FLAT_FIELDS = ("dtype", "kv_cache_dtype", "max_model_len", "tensor_parallel_size", "data_parallel_size",
                  "gpu_memory_utilization", "enforce_eager", "seed", "cpu_kvcache_space_gib")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: str = Field("auto", description="auto (float32 on CPUs without AVX-512) | bfloat16 | float16 | float32")
    max_model_len: int | None = Field(None, ge=16, description=f"None: the model's, capped at {MAX_MODEL_LEN_CAP}")
    kv_cache_dtype: str = Field("auto", description="auto (the model's dtype) or one of vLLM's kv_cache_dtype choices "
                                                    "(fp8, fp8_e4m3, ...: `ptq-deploy doctor` lists them and which run "
                                                    "here)")
    enforce_eager: bool | None = Field(None, description="None: eager on CPU, CUDA graphs on GPU")
    seed: int = 0
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine's layers are split across")
    pipeline_parallel_size: int = Field(1, ge=1, description="stages one engine's layers are split into "
                                                             "(GPUs per engine: tensor x pipeline)")
    data_parallel_size: int = Field(1, ge=1, description="engine replicas (eval: a `vllm serve` with data "
                                                         "parallelism, scored through lm-eval's local-completions)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kvcache_space_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    max_num_seqs: int | None = Field(None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="more vLLM engine args (KEY=VALUE)")

    @property
    def gpus_per_engine(self) -> int:
        """GPUs one engine replica occupies (tensor x pipeline parallel)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def parallel(self) -> bool:
        return self.gpus_per_engine * self.data_parallel_size > 1


class ResolvedEngine(EngineConfig):
    """``EngineConfig`` for one model on one machine: dtype, length and eager mode decided."""

    model: str
    gpus: bool
    dtype: str
    max_model_len: int
    enforce_eager: bool
    # a dense copy whose scheme quantizes activations: the spec vLLM quantizes them by (``engine.emulation``)
    emulated_activations: str | None = None


class EngineInfo(BaseModel):
    """What vLLM actually did with the checkpoint."""

    model: str
    quantization: str | None
    dtype: str
    kv_cache_dtype: str
    load_time_s: float  # LLM(...) construction, measured here
    weights_load_s: float | None = None  # vLLM's own "Loading weights took ... seconds"
    model_load_s: float | None = None  # vLLM's own "Model loading took ... seconds"
    compile_time_s: float | None = None  # vLLM's compilation_config.compilation_time (0 in eager mode)
    compile_cache: str = "unknown"  # "not used (eager mode)" | "warm (graphs loaded from cache)" | "cold (compiled)"
    device: str
    settings: ResolvedEngine
    memory: EngineMemory | None = None  # the engine's own memory, measured around the load
    host_heap: str | None = None  # how host memory was allocated while it ran (CPU: ``engine.heap``)


def nest_v1_fields(config: dict[str, Any]) -> dict[str, Any]:
    """A version-1 perf/eval config with its engine fields moved under ``engine``."""
    engine = {k: config.pop(k) for k in V1_FLAT_FIELDS if k in config}
    engine["extra"] = config.pop("extra_engine_args", {})
    return {**config, "engine": engine}
