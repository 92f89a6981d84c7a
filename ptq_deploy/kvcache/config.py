"""``ptq-deploy kv``'s options: ``KVSettings`` (what is measured; an experiment's ``kv:`` section) and
``KVConfig`` (+ the checkpoint, the methods, where the result goes)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptq_deploy import probe
from ptq_deploy.eval.config import split_names
from ptq_deploy.hardware import detect
from ptq_deploy.kvcache import methods
from ptq_deploy.kvcache.longctx import PasskeySpec


def offered_dtypes() -> tuple[str, ...]:
    """The ``kv_cache_dtype`` values the installed vLLM offers (the probe read them from vLLM; its FP8 ones
    where nothing was probed)."""
    return probe.rules(detect()).kv_dtypes


class ServedSettings(BaseModel):
    """The engine side of the served track (``KVSettings.served``)."""

    model_config = ConfigDict(extra="forbid")

    chunk: int = Field(512, ge=16, description="max_num_batched_tokens: tokens one engine step prefills (the scored "
                                               "tail reads the rest of the chapter from the cache)")
    decode_tokens: int = Field(32, ge=2, description="output tokens per decode-time request")
    repeats: int = Field(3, ge=1, description="decode-time measurements per context length")
    concurrency: int = Field(4, ge=0, description="sequences at once for the long-context throughput (0: not measured)")
    cpu_kvcache_space_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")


class KVSettings(BaseModel):
    """The long-context measurements (defaults sized for the embedded model on a 2-core CPU)."""

    model_config = ConfigDict(extra="forbid")

    passkey: PasskeySpec = Field(default_factory=lambda: PasskeySpec(lengths=[1024, 2048]),
                                 description="passkey retrieval: lengths x depths x samples")
    documents: int = Field(4, ge=0, description="whole chapters (the shortest of the bundled 2k-4k-token ones) for "
                                                "long-document and generation perplexity")
    scored_tokens: int = Field(256, ge=16, description="tokens scored at the end of each chapter, after the rest is cached")
    chunk: int = Field(64, ge=1, description="tokens per forward while scoring (each chunk attends to the cache)")
    generate_tokens: int = Field(32, ge=2, description="greedy continuation of each chapter prefix (generation perplexity)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="compute dtype (float32 on CPU)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")
    served: ServedSettings = Field(default_factory=ServedSettings,
                                   description="vLLM KV dtypes (fp8, ...): the engine side of their measurement")
    bootstrap_iters: int = Field(1000, ge=0, description="paired-bootstrap resamples for the intervals")
    seed: int = 0


class KVConfig(KVSettings):
    """Every option of ``ptq-deploy kv``."""

    checkpoint: str = Field(description="checkpoint directory, hub id, .gguf file or 'default'")
    methods: list[str] = Field(default_factory=lambda: ["none", *methods.quality_only()],
                               description="KV-cache methods (the baseline 'none' is always measured)")
    scales_from: str | None = Field(None, description="the same checkpoint compressed with --kv-cache fp8: the "
                                                     "calibrated vLLM rows (fp8) load it, the others the checkpoint")
    output_dir: Path = Field(Path("eval_results"), exclude=True)
    write: bool = Field(True, exclude=True)

    @field_validator("methods", mode="before")
    @classmethod
    def _split(cls, v):
        return split_names(v)

    @model_validator(mode="after")
    def _check(self) -> "KVConfig":
        for m in self.methods:
            methods.get(m, offered_dtypes())
        if "none" not in self.methods:
            self.methods = ["none", *self.methods]
        return self

    def settings(self) -> KVSettings:
        return KVSettings(**self.model_dump(include=set(KVSettings.model_fields)))
