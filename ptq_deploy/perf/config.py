"""``ptq-deploy perf``'s options: ``PerfSettings`` (the benchmark) and ``PerfConfig`` (+ checkpoint and
``EngineConfig``, nested as vLLM's benchmarks compose ``EngineArgs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptq_deploy.engine import EngineConfig

SLO_KEYS = ("ttft", "tpot", "e2el")


class PerfSettings(BaseModel):
    """The benchmark itself: workload, serving sweep, what to run (an experiment file's ``perf:``)."""

    model_config = ConfigDict(extra="forbid")

    # workload
    dataset: Literal["random", "text"] = Field("random", description="random (vLLM's RandomDataset) | text (bundled Austen)")
    num_prompts: int = Field(16, ge=1)
    input_len: int = Field(128, ge=4)
    output_len: int = Field(32, ge=2)
    latency_prompts: int | None = Field(None, ge=1, description="prompts for sequential batch-1 latency (default min(num_prompts, 8))")
    iterations: int = Field(3, ge=1)
    latency_ci: float | None = Field(None, gt=0, lt=1, description=(
        "stop timing batch-1 requests once the 95% interval of their mean latency is within +-this fraction "
        "(at least 3 requests; at most latency prompts x iterations); None: time them all"))
    warmup: int = Field(1, ge=0, description=(
        "warm-up rounds before timing; offline, a round is one batch-1 request and one batch, each generating "
        "2 tokens (a prefill and a decode step); serving, this many requests per concurrency slot"))
    # serving
    concurrency: list[int] = Field([1, 2, 4, 8], description="serving concurrency levels")
    request_rate: float | None = Field(None, gt=0, description="requests/s (Poisson); None = all at once, bounded by concurrency")
    goodput: dict[str, float] = Field({}, description="SLOs in ms: ttft, tpot, e2el")
    server_timeout_s: float = Field(600, gt=0)
    # what to run
    offline: bool = Field(True, description="in-process latency/throughput/roofline")
    serving: bool = Field(True, description="vllm serve sweep")
    roofline: bool = True

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int]) -> list[int]:
        if not v or any(c < 1 for c in v):
            raise ValueError("concurrency levels must be positive integers")
        return v

    @field_validator("goodput")
    @classmethod
    def _slo(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in SLO_KEYS]
        if bad:
            raise ValueError(f"unknown SLO {bad[0]!r}; use {', '.join(SLO_KEYS)} (milliseconds)")
        return v

    @property
    def n_latency_prompts(self) -> int:
        return self.latency_prompts or min(self.num_prompts, 8)


class PerfConfig(PerfSettings):
    """Every option of ``ptq-deploy perf``: the checkpoint, its engine settings and the benchmark."""

    checkpoint: str = Field(description="checkpoint directory")
    engine: EngineConfig = EngineConfig()
    output_dir: Path = Field(Path("perf_results"), exclude=True)
    write: bool = Field(True, exclude=True)


def parse_kv_args(items: list[str]) -> dict[str, Any]:
    """``["max_num_seqs=8", "block_size=16"]`` -> typed dict (int/float/bool/JSON where it parses)."""
    import json

    from ptq_deploy.errors import UsageError

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"engine arg {it!r} must be KEY=VALUE")
        k, v = it.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def parse_slos(items: list[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` (ms), as ``vllm bench serve --goodput``."""
    from ptq_deploy.errors import UsageError

    out = {}
    for it in items:
        k, sep, v = it.partition(":")
        if not sep or k not in SLO_KEYS:
            raise UsageError(f"--goodput {it!r}: expected one of {', '.join(SLO_KEYS)} as NAME:MS")
        try:
            out[k] = float(v)
        except ValueError:
            raise UsageError(f"--goodput {it!r}: {v!r} is not a number of milliseconds") from None
    return out
