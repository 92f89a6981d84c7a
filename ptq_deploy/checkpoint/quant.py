"""A checkpoint's quantization, parsed once from ``config.json`` into a typed ``Quantization``.

Understands compressed-tensors (``config_groups`` + ``kv_cache_scheme``), the GPTQ / AWQ hub
formats and the FP8 hub format; a config without ``quantization_config`` is dense. The same model
describes an llmcompressor recipe (``from_recipe``), so a user's ``--recipe`` is classified by the
quantization it asks for, not by searching its text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from ptq_deploy.errors import UsageError

DENSE_NAMES = {"bfloat16": "BF16", "float16": "FP16", "float32": "FP32"}
QUANT_MODIFIERS = ("GPTQModifier", "QuantizationModifier", "AutoRoundModifier")
# the floating-point formats that are each their own kernel family (vLLM has a scheme class per format)
FORMAT_KINDS = ("fp8-block", "nvfp4", "mxfp4", "mxfp8")
FORMAT_BITS = {"fp8": 8, "fp8-block": 8, "nvfp4": 4, "mxfp4": 4, "mxfp8": 8}
FORMAT_GROUP = {"nvfp4": 16, "mxfp4": 32, "mxfp8": 32}  # the group the format itself fixes


def kernel_kind(weights: str, activations: str) -> str:
    """The kernel family of weights / activations kinds (``fp8``, ``int4``, ``nvfp4`` ... / ``bf16``, ``fp8`` ...):
    ``dense``; ``fp8-w8a8``, ``int8-w8a8``; ``wna16`` (weight-only); ``w4afp8``; a float format's own
    family, ``nvfp4`` (W4A4) or ``nvfp4a16`` (weight-only), likewise ``mxfp4``, ``mxfp8``, ``fp8-block``."""
    if weights == "bf16":
        return "dense"
    if weights in FORMAT_KINDS:
        return weights if activations != "bf16" else f"{weights}a16"
    if activations == "bf16":
        return "wna16"
    if weights.startswith("int") and weights != "int8" and activations == "fp8":
        return f"w{weights[3:]}afp8"
    return f"{weights}-w8a8"


def format_kind(args: "QuantArgs") -> str:
    """``fp8`` | ``fp8-block`` | ``nvfp4`` | ``mxfp4`` | ``mxfp8`` | ``int<bits>`` of one tensor's quantization args:
    FP4 with a per-tensor global scale over FP8 group scales is NVFP4, FP4 / FP8 with E8M0 (uint8) group scales
    is MX, FP8 with 2-D block scales is FP8-BLOCK."""
    if args.type != "float":
        return f"int{args.num_bits}"
    e8m0 = "uint8" in str(args.scale_dtype or "")
    if args.num_bits == 4:
        return "nvfp4" if args.strategy == "tensor_group" else "mxfp4" if e8m0 else "fp4"
    if args.strategy == "block":
        return "fp8-block"
    return "mxfp8" if e8m0 and args.strategy == "group" else "fp8"


class QuantArgs(BaseModel):
    """The part of compressed-tensors' ``QuantizationArgs`` this project reads."""

    model_config = ConfigDict(extra="ignore")

    num_bits: int = 8
    type: Literal["int", "float"] = "int"
    symmetric: bool = True
    strategy: str | None = None
    group_size: int | None = None
    dynamic: bool | str = False
    actorder: str | bool | None = None
    block_structure: list[int] | None = None
    scale_dtype: str | None = None  # "torch.uint8": E8M0 (MX) scales; "torch.float8_e4m3fn": NVFP4's

    @field_validator("scale_dtype", mode="before")
    @classmethod
    def _dtype_name(cls, v: Any) -> str | None:
        return None if v is None else str(v)


class Quantization(BaseModel):
    method: str | None = None  # compressed-tensors | gptq | awq | fp8 | another method | None: dense
    format: str | None = None
    status: str | None = None
    version: str | None = None
    weights: QuantArgs | None = None  # None: 16-bit weights
    input_activations: QuantArgs | None = None  # None: 16-bit activations
    targets: list[str] = []
    ignore: list[str] = []
    kv_cache: QuantArgs | None = None
    dense_dtype: str = "bfloat16"  # the checkpoint's floating-point dtype

    @property
    def weight_bits(self) -> int:
        return self.weights.num_bits if self.weights else 16

    @property
    def weight_kind(self) -> str:
        """``bf16`` | ``fp8`` | ``fp8-block`` | ``nvfp4`` | ``mxfp4`` | ``mxfp8`` | ``int8`` | ``int4`` ... (the
        registry's vocabulary)."""
        return "bf16" if self.weights is None else format_kind(self.weights)

    @property
    def activation_kind(self) -> str:
        """``bf16`` | ``fp8`` | ``nvfp4`` | ``mxfp4`` | ``mxfp8`` | ``int8``: what the activations are quantized to."""
        a = self.input_activations
        return "bf16" if a is None else format_kind(a)

    @property
    def kind(self) -> str:
        """Kernel family (``kernel_kind``): what ``support`` and the probe decide on."""
        return kernel_kind(self.weight_kind, self.activation_kind)

    @property
    def group_size(self) -> int | None:
        return self.weights.group_size if self.weights else None

    @property
    def name(self) -> str:
        """``FP8-W8A8``, ``INT4-W4A16``, ``GPTQ-W4A16``; dense checkpoints by dtype (``BF16``)."""
        if self.weights is None:
            if self.method and self.method != "compressed-tensors":
                return self.method.upper()
            return DENSE_NAMES.get(self.dense_dtype, self.dense_dtype.upper())
        acts = self.input_activations.num_bits if self.input_activations else 16
        prefix = self.method.upper() if self.method in ("gptq", "awq") else self.weight_kind.upper()
        return f"{prefix}-W{self.weight_bits}A{acts}{'-FP8' if self.activation_kind == 'fp8' and self.weight_bits < 8 else ''}"

    @property
    def kv_cache_dtype(self) -> str | None:
        """vLLM's name for the calibrated KV-cache dtype, when the checkpoint carries one."""
        if self.kv_cache is None:
            return None
        return "fp8" if self.kv_cache.type == "float" else f"int{self.kv_cache.num_bits}"


def from_config(config: dict[str, Any]) -> Quantization:
    """The quantization of a checkpoint's ``config.json`` (already loaded as a dict)."""
    dense = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    qc = config.get("quantization_config") or {}
    if not qc:
        return Quantization(dense_dtype=dense)
    method = qc.get("quant_method")
    common = dict(method=method, dense_dtype=dense, version=qc.get("version"))
    if method in ("gptq", "awq"):
        group = int(qc.get("group_size", -1) or -1)
        w = QuantArgs(num_bits=int(qc.get("bits", 4)), type="int", symmetric=bool(qc.get("sym", True)),
                      strategy="group" if group > 0 else "channel", group_size=group if group > 0 else None)
        return Quantization(**common, format=qc.get("checkpoint_format") or method, weights=w, targets=["Linear"],
                            ignore=[*(qc.get("modules_to_not_convert") or []), "lm_head"])
    if method == "fp8":
        return Quantization(**common, format="fp8", weights=QuantArgs(num_bits=8, type="float"),
                            input_activations=QuantArgs(num_bits=8, type="float", dynamic=True),
                            ignore=list(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []))
    kv = QuantArgs.model_validate(qc["kv_cache_scheme"]) if qc.get("kv_cache_scheme") else None
    if method != "compressed-tensors":
        return Quantization(**common, kv_cache=kv,
                            ignore=list(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or []))
    groups = qc.get("config_groups") or {}
    first = next(iter(groups.values()), {})
    return Quantization(
        **common, format=qc.get("format"), status=qc.get("quantization_status"), kv_cache=kv,
        weights=QuantArgs.model_validate(first["weights"]) if first.get("weights") else None,
        input_activations=(QuantArgs.model_validate(first["input_activations"])
                           if first.get("input_activations") else None),
        targets=sorted({t for g in groups.values() for t in g.get("targets") or []}),
        ignore=list(qc.get("ignore") or []))


def modifiers(recipe: dict[str, Any]):
    """Yield ``(name, args)`` for every modifier in a stage/group-nested llmcompressor recipe."""
    for stage in recipe.values():
        if not isinstance(stage, dict):
            continue
        for group in stage.values():
            if isinstance(group, dict):
                for mod_name, args in group.items():
                    if mod_name.endswith("Modifier") and isinstance(args, dict):
                        yield mod_name, args


def _recipe_groups(args: dict[str, Any]) -> list[dict[str, Any]]:
    """A quantization modifier's schemes as compressed-tensors groups (presets such as ``W4A16`` expanded)."""
    if args.get("config_groups"):
        return list(args["config_groups"].values())
    preset = args.get("scheme")
    if preset is None:
        return []
    if isinstance(preset, str):
        preset = {preset: args.get("targets") or ["Linear"]}
    # compressed-tensors imports torch: loaded only when a recipe names a preset
    from compressed_tensors.quantization import preset_name_to_scheme

    groups = []
    for name, targets in preset.items():
        try:
            groups.append(preset_name_to_scheme(name, targets).model_dump(mode="json"))
        except (KeyError, ValueError):
            raise UsageError(f"unknown quantization preset {name!r} in the recipe") from None
    return groups


def from_recipe(recipe: dict[str, Any]) -> Quantization:
    """The quantization an llmcompressor recipe produces (its last quantization modifier decides)."""
    quant = [args for name, args in modifiers(recipe) if name in QUANT_MODIFIERS]
    if not quant:
        return Quantization()
    args = quant[-1]
    groups = _recipe_groups(args)
    first = groups[0] if groups else {}
    kv = QuantArgs.model_validate(args["kv_cache_scheme"]) if args.get("kv_cache_scheme") else None
    return Quantization(
        method="compressed-tensors", kv_cache=kv,
        weights=QuantArgs.model_validate(first["weights"]) if first.get("weights") else None,
        input_activations=(QuantArgs.model_validate(first["input_activations"])
                           if first.get("input_activations") else None),
        targets=sorted({t for g in groups for t in g.get("targets") or []}), ignore=list(args.get("ignore") or []))
