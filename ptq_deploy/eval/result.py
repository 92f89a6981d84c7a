"""EvalResult: one versioned JSON per eval run (``eval_results/<model>_<scheme>_<timestamp>.json``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from ptq_deploy.engine.config import nest_v1_fields
from ptq_deploy.eval.config import EvalConfig
from ptq_deploy.results import ResultEnvelope
from ptq_deploy.results.envelope import v1_identity


class EvalSettings(BaseModel):
    """The resolved settings a score depends on; a baseline must match them to be compared."""

    backend: Literal["vllm", "hf"]
    dtype: str
    max_model_len: int
    kv_cache_dtype: str
    enforce_eager: bool | None
    add_bos_token: bool
    apply_chat_template: bool
    num_fewshot: int | None
    limit: int | float | None
    seed: int
    batch_size: int | str
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    host_heap: str | None = None  # CPU: how host memory was allocated (``engine.heap``)
    softmax_dtype: str | None = None  # hf: the dtype of its log-probabilities when not the model's (None: the model's)

    # fields that may differ between two comparable runs (they do not change the scores)
    NOT_COMPARED: ClassVar[tuple[str, ...]] = ("batch_size", "tensor_parallel_size", "pipeline_parallel_size",
                                              "data_parallel_size", "host_heap")

    def differences(self, other: "EvalSettings") -> dict[str, tuple[Any, Any]]:
        """What differs; a dtype of ``auto`` (planned, not loaded yet) is compared again once the engine says."""
        a, b = self.model_dump(), other.model_dump()
        return {k: (a[k], b[k]) for k in a if k not in self.NOT_COMPARED and a[k] != b[k]
                and not (k == "dtype" and "auto" in (a[k], b[k]))}


class MetricValue(BaseModel):
    value: float
    stderr: float | None = None
    stderr_source: Literal["lm-eval", "bootstrap"] | None = None
    higher_is_better: bool | None = None
    aggregation: str | None = None


class PerSample(BaseModel):
    """Compact per-document metric values (what lm-eval aggregates), kept for paired comparisons."""

    doc_ids: list[int]
    values: dict[str, list[Any]]


class TaskResult(BaseModel):
    task: str
    metrics: dict[str, MetricValue]
    n_shot: int | None = None
    n_samples: dict[str, int] = {}
    version: Any = None
    config: dict[str, Any] = {}
    per_sample: PerSample | None = None
    samples: list[dict[str, Any]] | None = None  # lm-eval's full records, with --log-samples

    def primary_metric(self) -> str:
        for m in ("acc_norm", "acc", "exact_match", "word_perplexity", "perplexity"):
            if m in self.metrics:
                return m
        return next(iter(self.metrics))


class EngineSummary(BaseModel):
    quantization: str | None = None
    dtype: str | None = None


class Recovery(BaseModel):
    task: str
    metric: str
    baseline: float
    quantized: float
    delta: float
    recovery: float | None
    higher_is_better: bool
    stderr: float | None
    ci95: tuple[float, float] | None
    method: str
    n_paired: int | None = None
    verdict: Literal["not distinguishable", "regressed", "improved", "unknown"]


class EvalResult(ResultEnvelope):
    kind: Literal["eval"] = "eval"
    backend: Literal["vllm", "hf"]
    settings: EvalSettings
    tasks: dict[str, TaskResult]
    engine: EngineSummary = EngineSummary()
    lm_eval: dict[str, Any] = {}
    config: EvalConfig
    baseline: str | None = None
    recovery: list[Recovery] | None = None
    dequantized_from: str | None = None  # scored on a dense copy of this quantized checkpoint
    # what the scored model did with activations the scheme quantizes (``eval.runner.activation_path``): "16-bit"
    # (the scheme does not quantize them), "kernel" (vLLM ran the scheme's kernel), "emulated" (compressed-tensors'
    # forward_quantize before each Linear: transformers on the checkpoint, or vLLM on a dense copy through
    # ``engine.emulation``), "not emulated" (a dense copy ran them 16-bit: the row is judged apart, not ranked);
    # None: not recorded
    activations: Literal["16-bit", "kernel", "emulated", "not emulated"] | None = None

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["config"] = nest_v1_fields(data.get("config") or {})
        data.pop("path", None)
        return v1_identity(data, data.get("model_name"), data.get("scheme"), data.get("checkpoint"))
