"""The inspect report's schema: ``InspectConfig`` in, ``InspectReport`` (a result envelope) out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ptq_deploy.checkpoint import CheckpointMetadata, Quantization, SafetensorsFile, TensorEntry
from ptq_deploy.hardware.support import Support
from ptq_deploy.models import DEFAULT_ALIASES, DEFAULT_MODEL
from ptq_deploy.results import ResultEnvelope
from ptq_deploy.results.envelope import v1_identity

Severity = Literal["error", "warning", "info"]


class InspectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: Path
    device: str | None = Field(None, description="local (default) | cpu | a named GPU for a what-if (h100, a100, ...)")
    runtime: bool = Field(False, description="also load it in vLLM: quantization method, linear kernel, load time")
    trust_remote_code: bool = False


class Finding(BaseModel):
    severity: Severity
    code: str
    message: str


class Aggregate(BaseModel):
    tensors: int = 0
    params: int = 0  # logical weights (a packed int4 tensor counts its unpacked values)
    bytes: int = 0
    dtypes: list[str] = []
    module_class: str | None = None
    modules: int = 0


class LinearLayer(BaseModel):
    name: str
    in_features: int | None
    out_features: int | None
    status: Literal["quantized", "16-bit", "tied", "broken", "missing"]
    reason: str = ""  # why 16-bit (ignore rule / not targeted / tied) or what is wrong
    storage: str = ""  # e.g. "int4 packed in I32 + BF16 scales (group 64)"
    bytes: int = 0
    bits_per_weight: float | None = None
    problems: list[str] = []


class HardwareFit(BaseModel):
    device: str
    support: Support
    kv_cache: Support | None = None
    weight_memory_bytes: int
    device_memory_bytes: int
    fits_in_memory: bool


class RuntimeInfo(BaseModel):
    loaded: bool
    not_runnable: str | None = None
    quantization: str | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    load_time_s: float | None = None
    linear_kernels: dict[str, int] = {}  # "method / scheme / kernel" -> number of Linear modules



class InspectReport(ResultEnvelope):
    kind: Literal["inspect"] = "inspect"
    architecture: str | None
    model_type: str | None
    shape_source: Literal["config", "tensors"]  # where logical Linear shapes came from
    metadata: CheckpointMetadata | None  # the checkpoint's ptq_deploy.json
    quantization: Quantization
    description: str = ""  # the scheme's, per the registry or the config's format
    files: list[SafetensorsFile]
    disk_bytes: int
    tensor_bytes: int
    bf16_bytes: int | None
    compression_ratio: float | None
    linear_bits_per_weight: float | None  # quantized (targeted) Linear layers
    all_linear_bits_per_weight: float | None
    effective_bytes: int | None = None  # fake-quantized: the tensors with its codes + scales instead of 16-bit weights
    by_layer_type: dict[str, Aggregate]
    by_dtype: dict[str, Aggregate]
    linears: list[LinearLayer]
    hardware: HardwareFit
    runtime: RuntimeInfo | None = None
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def tensors(self) -> list[TensorEntry]:
        return [t for f in self.files for t in f.tensors]

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        q = data.get("quantization") or {}
        q["kv_cache"] = q.pop("kv_cache_scheme", None)
        data["description"] = q.get("description") or ""
        made_by = data.pop("provenance", None) or {}  # version 1 kept a summary of ptq_deploy.json here
        data["metadata"] = None
        source = made_by.get("source") or data.get("checkpoint") or "?"
        model = DEFAULT_MODEL if source in DEFAULT_ALIASES else Path(source).name
        return v1_identity(data, model, made_by.get("scheme") or q.get("scheme"), data.get("checkpoint"),
                           made_by.get("kv_cache"))
