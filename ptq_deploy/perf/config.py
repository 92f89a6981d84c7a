"""``ptq-deploy perf``'s options: ``PerfSettings`` (the benchmark) and ``PerfConfig`` (+ checkpoint and
``EngineConfig``, nested as vLLM's benchmarks compose ``EngineArgs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptq_deploy.engine import EngineConfig
from ptq_deploy.errors import UsageError

SLO_KEYS = ("ttft", "tpot", "e2el")


def check_slos(v: dict[str, float]) -> dict[str, float]:
    """Latency targets (ms, p99 where a percentile applies): known names, positive values (pydantic validators)."""
    bad = [k for k in v if k not in SLO_KEYS]
    if bad:
        raise ValueError(f"unknown latency target {bad[0]!r}; use {', '.join(SLO_KEYS)} (milliseconds)")
    if any(x <= 0 for x in v.values()):
        raise ValueError("latency targets are positive milliseconds")
    return v


class Shape(BaseModel):
    """A serving workload shape: prompts of ``input_len`` tokens, each asking for exactly ``output_len``."""

    model_config = ConfigDict(extra="forbid")

    input_len: int = Field(ge=4, description="prompt tokens")
    output_len: int = Field(ge=2, description="output tokens each request generates (ignore_eos)")

    def label(self) -> str:
        return f"{self.input_len} in / {self.output_len} out"


# the regimes a deployment is usually asked about (the shapes ``vllm bench`` users sweep); an experiment names its own
SHAPES = {"chat": Shape(input_len=256, output_len=128), "long_prompt": Shape(input_len=4096, output_len=256),
          "long_generation": Shape(input_len=256, output_len=1024)}


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
    concurrency: list[int] | None = Field(None, description=(
        "serving concurrency levels, each run; None: the load sweep chooses them, doubling from 1 up to "
        "max_concurrency until output tok/s rises by less than `saturation`, a goodput SLO's p99 breaks, or "
        "the shape's sweep has run `sweep_budget_s`"))
    max_concurrency: int = Field(64, ge=1, description="the load sweep's highest concurrency")
    saturation: float = Field(0.1, ge=0, description=(
        "the load sweep stops when doubling the concurrency raises output tok/s by less than this fraction"))
    sweep_budget_s: float = Field(600, gt=0, description="the load sweep starts no new level once a shape has run this long")
    requests_per_slot: int = Field(2, ge=1, description=(
        "requests per serving level: max(min_requests, this x concurrency), so every slot is refilled"))
    min_requests: int | None = Field(None, ge=1, description="requests per serving level, at least (default: num_prompts)")
    shapes: dict[str, Shape] = Field({}, description=(
        "serving workload shapes, each swept, e.g. {chat: {input_len: 256, output_len: 128}, long_prompt: "
        "{input_len: 4096, output_len: 256}}; none: the workload above (input_len / output_len)"))
    request_rate: float | None = Field(None, gt=0, description="requests/s (Poisson); None = all at once, bounded by concurrency")
    goodput: dict[str, float] = Field({}, description="SLOs in ms: ttft, tpot, e2el")
    server_timeout_s: float = Field(600, gt=0)
    # what to run
    offline: bool = Field(True, description="in-process latency/throughput/roofline")
    serving: bool = Field(True, description="vllm serve sweep")
    serving_schemes: list[str] | None = Field(None, description=(
        "in an experiment: the schemes whose cells run the serving sweep (each starts a vllm serve, ~40 s on a "
        "small CPU); None: every cell's"))
    roofline: bool = True

    @field_validator("concurrency")
    @classmethod
    def _conc(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError("concurrency levels must be positive integers")
        return v

    @field_validator("goodput")
    @classmethod
    def _slo(cls, v: dict[str, float]) -> dict[str, float]:
        return check_slos(v)

    @property
    def n_latency_prompts(self) -> int:
        return self.latency_prompts or min(self.num_prompts, 8)

    @property
    def adaptive(self) -> bool:
        return self.concurrency is None

    def levels(self) -> list[int]:
        """The concurrency ladder: the given levels, or 1, 2, 4, ... up to ``max_concurrency`` (the sweep may stop early)."""
        if self.concurrency is not None:
            return list(self.concurrency)
        out = [1]
        while out[-1] * 2 <= self.max_concurrency:
            out.append(out[-1] * 2)
        return out

    def requests_at(self, concurrency: int) -> int:
        return max(self.min_requests or self.num_prompts, self.requests_per_slot * concurrency)

    def serving_shapes(self) -> dict[str, Shape]:
        return dict(self.shapes) or {"workload": Shape(input_len=self.input_len, output_len=self.output_len)}


class PerfConfig(PerfSettings):
    """Every option of ``ptq-deploy perf``: the checkpoint, its engine settings and the benchmark."""

    checkpoint: str = Field(description="checkpoint directory")
    engine: EngineConfig = EngineConfig()
    output_dir: Path = Field(Path("perf_results"), exclude=True)
    write: bool = Field(True, exclude=True)


def parse_kv_args(items: list[str]) -> dict[str, Any]:
    """``["max_num_seqs=8", "block_size=16"]`` -> typed dict (int/float/bool/JSON where it parses)."""
    import json

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


def parse_slos(items: list[str], option: str = "--goodput") -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` (ms), as ``vllm bench serve --goodput``."""
    out = {}
    for it in items:
        k, sep, v = it.partition(":")
        if not sep or k not in SLO_KEYS:
            raise UsageError(f"{option} {it!r}: expected one of {', '.join(SLO_KEYS)} as NAME:MS")
        try:
            out[k] = float(v)
        except ValueError:
            raise UsageError(f"{option} {it!r}: {v!r} is not a number of milliseconds") from None
        if out[k] <= 0:
            raise UsageError(f"{option} {it!r}: a latency target is a positive number of milliseconds")
    return out


def parse_shapes(items: list[str]) -> dict[str, Shape]:
    """``["chat", "rag=4096:128"]`` -> shapes (a preset name from ``SHAPES``, or NAME=IN:OUT tokens)."""
    out: dict[str, Shape] = {}
    for it in items:
        name, sep, spec = it.partition("=")
        name = name.strip()
        if not sep:
            if name not in SHAPES:
                raise UsageError(f"--shape {it!r}: no preset of that name; use {', '.join(SHAPES)} or NAME=IN:OUT")
            out[name] = SHAPES[name]
            continue
        try:
            i, o = (int(x) for x in spec.split(":"))
            out[name] = Shape(input_len=i, output_len=o)
        except ValueError:
            raise UsageError(f"--shape {it!r}: expected NAME=IN:OUT in tokens, e.g. chat=256:128 "
                             "(at least 4 in and 2 out)") from None
    return out
