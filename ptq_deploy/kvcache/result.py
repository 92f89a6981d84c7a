"""KVResult: one versioned JSON per ``kv`` run: every method's long-context scores, measured against the
baseline cache, with the proof that it was applied.

Per method: passkey accuracy by depth x length, long-document and generation perplexity with their
paired-bootstrap delta vs the baseline, token agreement with the baseline's own continuation, the
bytes the cache holds per token and the logit difference vs the unquantized cache on the same input.
A method whose logits are bit-identical to the baseline's, or whose cache is no smaller, is an error
finding and goes to ``rejected``, never to ``methods``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ptq_deploy.kvcache.config import KVSettings
from ptq_deploy.results import ResultEnvelope
from ptq_deploy.stats import Summary


class Delta(BaseModel):
    """candidate - baseline, with the 95% interval of a paired bootstrap over the same samples."""

    baseline: float
    value: float
    delta: float
    stderr: float | None
    ci95: tuple[float, float] | None
    n: int
    verdict: Literal["not distinguishable", "regressed", "improved", "unknown"]


class PasskeyCell(BaseModel):
    length: int
    depth: float
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


class Samples(BaseModel):
    """Per-sample values, keyed by sample id (what the paired comparisons resample)."""

    passkey: dict[str, bool] = {}
    passkey_answer: dict[str, str] = {}
    longdoc: dict[str, tuple[float, int]] = {}  # (negative log-likelihood sum, tokens)
    generation: dict[str, tuple[float, int]] = {}  # scored by the baseline
    agreement: dict[str, float] = {}
    bytes_per_token: dict[str, float] = {}
    logit_max_abs: dict[str, float] = {}
    logit_mean_abs: dict[str, float] = {}
    kl: dict[str, float] = {}
    identical: dict[str, bool] = {}


class ServedCost(BaseModel):
    """The cost side of one KV dtype, measured in its engine."""

    kv_cache_dtype: str
    dtype: str  # the engine's compute dtype
    attention_backend: str | None  # the backend vLLM chose for the attention layers
    capacity_tokens: int | None  # tokens the engine's KV cache holds (blocks x block size)
    cache_bytes: int | None  # the memory vLLM gave the KV cache (its log)
    bytes_per_token: float | None  # cache_bytes / capacity_tokens
    concurrent_sequences_at: dict[int, int] = {}  # context tokens -> sequences whose KV fits at once
    decode_ms_per_token: dict[int, Summary] = {}  # context tokens -> batch-1 decode time per output token
    decode_slope_ms_per_1k: float | None = None  # least-squares slope of the decode time over the context
    long_context_tokens_per_s: Summary | None = None  # output tok/s, ``concurrency`` sequences at the longest context
    concurrency: int = 0
    long_context: int = 0
    output_tokens: int = 0


class MethodResult(BaseModel):
    method: str
    family: str
    description: str
    params: dict[str, Any]
    quality_only: bool
    backend: Literal["transformers", "vllm"] = "transformers"  # where it was measured (its baseline: the same)
    passkey: list[PasskeyCell] = []
    passkey_accuracy: Summary | None = None
    longdoc_ppl: float | None = None
    generation_ppl: float | None = None
    agreement: Summary | None = None
    bytes_per_token: Summary | None = None
    buffer_bytes_per_token: Summary | None = None
    bytes_ratio: float | None = None  # vs the baseline's measured bytes per token
    logit_max_abs_diff: Summary | None = None
    logit_mean_abs_diff: Summary | None = None
    kl: Summary | None = None
    identical_samples: int = 0
    passkey_delta: Delta | None = None
    longdoc_delta: Delta | None = None
    generation_delta: Delta | None = None
    wall_time_s: float = 0.0
    cost: ServedCost | None = None  # vLLM rows: capacity, bytes per token, decode time by context
    samples: Samples = Samples()


class KVFinding(BaseModel):
    severity: Literal["error", "warning"]
    method: str
    message: str


class KVResult(ResultEnvelope):
    kind: Literal["kv"] = "kv"
    settings: KVSettings
    compute_dtype: str
    model_max_position: int | None = None
    methods: list[MethodResult]
    rejected: list[MethodResult] = []
    findings: list[KVFinding] = []
    data: dict[str, Any] = {}  # provenance of the samples: source, hashes, tokenizer, seed
    prefill_s: float = 0.0  # full-precision prefills, shared by every method

    def file_name(self) -> str:
        """``<model>_<scheme>_kv_<time>.json`` (beside eval results, told apart by name)."""
        stem = super().file_name()
        return stem.replace(f"_{stem.rsplit('_', 1)[-1]}", f"_kv_{stem.rsplit('_', 1)[-1]}")

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == name), None)
