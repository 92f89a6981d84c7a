"""KV-cache method registry: the ``kv_cache`` options of compress / eval / kv / run / report.

Two kinds of method:
- **vLLM** (``none`` included): a vLLM ``kv_cache_dtype``. ``fp8`` uses the checkpoint's llmcompressor-
  calibrated scales (``compress --kv-cache fp8``), ``fp8-uncalibrated`` vLLM's default scales of 1.0 on a
  plain checkpoint. They run where vLLM supports an fp8 KV cache (GPUs, AVX-512/AMX CPUs) and are refused
  with the reason elsewhere (as the probe measured it on this machine, ``probe.Rules.kv``).
- **quality only** (``vLLM cannot serve this``): measured through transformers (``kvcache.cache``): KIVI-style
  2/4-bit, KVQuant-style dense-and-sparse, plain 8-bit, FORGE-style low rank, and transformers' own
  ``QuantizedCache``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ptq_deploy.errors import UsageError

QUALITY_ONLY_NOTE = "quality only - vLLM cannot serve this"
Family = Literal["none", "vllm", "kivi", "kvquant", "uniform", "forge", "hf-quanto", "passthrough"]


class KVMethod(BaseModel):
    """One KV-cache option and its parameters (``group``: tokens per key group / channels per value group,
    or tokens per low-rank chunk; ``window``: most recent tokens kept at full precision)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: Family
    description: str
    bits: int | None = None
    group: int | None = None
    window: int = 0
    outliers: float | None = None
    energy: float | None = None
    vllm_dtype: str | None = None  # vLLM methods: the engine's kv_cache_dtype
    calibrated: bool | None = None  # vLLM fp8: scales from the checkpoint (llmcompressor) or 1.0

    @property
    def quality_only(self) -> bool:
        return self.vllm_dtype is None and self.family != "none"

    @property
    def baseline(self) -> bool:
        return self.family == "none"

    def params(self) -> dict:
        return self.model_dump(exclude={"name", "description", "family"}, exclude_none=True)


REGISTRY: dict[str, KVMethod] = {m.name: m for m in [
    KVMethod(name="none", family="none", description="the model's own dtype (the baseline)", vllm_dtype="auto"),
    KVMethod(name="fp8", family="vllm", vllm_dtype="fp8", calibrated=True,
             description="vLLM fp8 KV cache with llmcompressor-calibrated per-tensor scales"),
    KVMethod(name="fp8-uncalibrated", family="vllm", vllm_dtype="fp8", calibrated=False,
             description="vLLM fp8 KV cache with vLLM's default scales (1.0)"),
    KVMethod(name="kivi-int2", family="kivi", bits=2, group=32, window=128,
             description="KIVI-style 2-bit: keys per channel, values per token, group 32, last 128 tokens full precision"),
    KVMethod(name="kivi-int4", family="kivi", bits=4, group=32, window=128,
             description="KIVI-style 4-bit: keys per channel, values per token, group 32, last 128 tokens full precision"),
    KVMethod(name="kvquant-int3", family="kvquant", bits=3, group=32, window=128, outliers=0.01,
             description="KVQuant-style 3-bit: keys per channel, values per token, 1% outliers kept in fp16"),
    KVMethod(name="kvquant-int2", family="kvquant", bits=2, group=32, window=128, outliers=0.01,
             description="KVQuant-style 2-bit: keys per channel, values per token, 1% outliers kept in fp16"),
    KVMethod(name="uniform-int8", family="uniform", bits=8, group=32, window=128,
             description="8-bit asymmetric: keys per channel, values per token, group 32, no outliers"),
    KVMethod(name="forge-95", family="forge", group=64, window=128, energy=0.95,
             description="FORGE-style low rank: SVD of 64-token K/V chunks keeping 95% of the energy"),
    KVMethod(name="hf-quanto-int4", family="hf-quanto", bits=4, group=64, window=128,
             description="transformers' QuantizedCache (quanto backend) as shipped: 4-bit per token, residual 128"),
]}

# the baseline of the vLLM rows (``ptq-deploy kv``: every vLLM KV dtype is compared with it)
VLLM_BASELINE = KVMethod(name="auto", family="none", vllm_dtype="auto",
                         description="vLLM's kv_cache_dtype=auto: the model's dtype (the baseline of the vLLM rows)")

# Not a row: NVIDIA kvpress (eviction presses) pins transformers<5.3; the runtime pins transformers 5.19.
NOT_INCLUDED = {"kvpress": "kvpress 0.5.5 requires transformers<5.3; the runtime environment pins 5.19"}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str, offered: Sequence[str] = ()) -> KVMethod:
    """A registry method, or one of the ``kv_cache_dtype`` values vLLM ``offered`` (served with vLLM's default
    scales; ``kvcache.config.offered_dtypes``: what the probe read from the installed vLLM)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name == "auto" and offered:
        return VLLM_BASELINE
    if name in offered:
        return KVMethod(name=name, family="vllm", vllm_dtype=name, calibrated=False,
                        description=f"vLLM kv_cache_dtype={name} with vLLM's default scales")
    close = difflib.get_close_matches(name, [*REGISTRY, *offered], n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UsageError(f"unknown KV-cache method {name!r}{hint}; Available: {', '.join(REGISTRY)}"
                     + (f"; vLLM's kv_cache_dtype values: {', '.join(d for d in offered if d != 'auto')}" if offered else ""))


def quality_only() -> list[str]:
    return [n for n, m in REGISTRY.items() if m.quality_only]


def label(m: KVMethod) -> str:
    return f"{m.name} ({QUALITY_ONLY_NOTE})" if m.quality_only else m.name
