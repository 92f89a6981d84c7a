"""inspect: what is really in a checkpoint, and will it run here.

``inspect_checkpoint(InspectConfig) -> InspectReport``. Reads ``config.json`` (its
``quantization_config``), ``ptq_deploy.json`` when present, and the safetensors headers (never the
weights), then:

- aggregates tensors by layer type and dtype, bytes on disk, the compression ratio against the same
  architecture in BF16 (parameter count from the config, built on the meta device) and the effective
  bits per weight of the Linear layers;
- proves the quantization: every Linear the config targets must carry its quantized weight, scales
  (and zero points) with shapes consistent with the config (group size included); Linears left in
  16 bits are listed with the reason; a checkpoint claiming a scheme its tensors do not carry is an
  error finding. Compressed-tensors, GPTQ and AWQ hub formats are recognised;
- says which vLLM kernel family applies on the local (or a named) device and whether it runs;
- with ``runtime=True`` loads the checkpoint in vLLM and reports the linear kernel vLLM selected.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ptq_deploy import checkpoint as ckpt
from ptq_deploy.checkpoint import TensorEntry
from ptq_deploy.errors import NotRunnableHere, PtqError, UsageError
from ptq_deploy.results import SCHEMA_VERSION
from ptq_deploy.support import Support

Severity = Literal["error", "warning", "info"]
FLOAT16 = {"BF16", "F16", "F32", "F64"}
QUANT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
                  "weight_global_scale", "qweight", "qzeros", "scales", "g_idx", "weight_scale_inv")


class InspectConfig(BaseModel):
    checkpoint: Path
    device: str | None = None  # local (default) | cpu | h100 | a100 | l40s | ...
    runtime: bool = False
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


class QuantizationInfo(BaseModel):
    method: str | None  # compressed-tensors | gptq | awq | fp8 | ... | None (dense)
    format: str | None
    status: str | None
    scheme: str  # as described by ptq_deploy.checkpoint.scheme_of
    description: str
    weights: dict[str, Any] | None = None
    input_activations: dict[str, Any] | None = None
    targets: list[str] = []
    ignore: list[str] = []
    kv_cache_scheme: dict[str, Any] | None = None
    version: str | None = None


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


class InspectReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["inspect"] = "inspect"
    checkpoint: str
    architecture: str | None
    model_type: str | None
    shape_source: Literal["config", "tensors"]  # where logical Linear shapes came from
    provenance: dict[str, Any] | None
    quantization: QuantizationInfo
    files: list[ckpt.SafetensorsFile]
    disk_bytes: int
    tensor_bytes: int
    bf16_bytes: int | None
    compression_ratio: float | None
    linear_bits_per_weight: float | None  # quantized (targeted) Linear layers
    all_linear_bits_per_weight: float | None
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


# ---------------------------------------------------------------- architecture (meta device)
class _Module(BaseModel):
    name: str
    classes: list[str]  # MRO class names, for compressed-tensors class targets ("Linear")
    in_features: int | None = None
    out_features: int | None = None
    tied_to: str | None = None


def _meta_modules(path: Path, config: dict[str, Any], trust_remote_code: bool) -> tuple[dict[str, _Module], int] | None:
    """Module tree and parameter count of the architecture, built from config.json on the meta device."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    except Exception:
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    owner = {id(p): n for n, p in model.named_parameters()}  # first name wins: the stored one when tied
    mods: dict[str, _Module] = {}
    for name, m in model.named_modules():
        if not name:
            continue
        classes = [c.__name__ for c in type(m).__mro__ if issubclass(c, torch.nn.Module)]
        mod = _Module(name=name, classes=classes)
        if isinstance(m, torch.nn.Linear):
            mod.in_features, mod.out_features = m.in_features, m.out_features
            stored = owner.get(id(m.weight))
            if stored and stored != f"{name}.weight":
                mod.tied_to = stored.rsplit(".", 1)[0]
        mods[name] = mod
    return mods, sum(p.numel() for p in model.parameters())


def _modules_from_tensors(tensors: dict[str, TensorEntry]) -> dict[str, _Module]:
    """Fallback when transformers cannot build the architecture: Linears recognised by tensor names."""
    mods: dict[str, _Module] = {}
    for name, t in tensors.items():
        prefix, _, suffix = name.rpartition(".")
        linear = (suffix in ("weight_packed", "qweight") or (suffix == "weight" and len(t.shape) == 2)) \
            and not re.search(r"(^|\.)(embed\w*|wte|wpe)$", prefix)
        if prefix and prefix not in mods:
            mods[prefix] = _Module(name=prefix, classes=["Linear"] if linear else [])
    return mods


def _layer_type(module: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", module)


def _module_of(tensor: str, modules: dict[str, _Module]) -> str:
    prefix = tensor.rsplit(".", 1)[0] if "." in tensor else tensor
    while prefix and prefix not in modules and "." in prefix:
        prefix = prefix.rsplit(".", 1)[0]
    return prefix


# ---------------------------------------------------------------- quantization config
def _matches(mod: _Module, target: str) -> bool:
    from compressed_tensors.utils.match import match_name

    return match_name(mod.name, target) or target in mod.classes or (target == "Linear" and "LinearBase" in mod.classes)


def _ct_config(qc: dict[str, Any]):
    from compressed_tensors.quantization import QuantizationConfig

    try:
        return QuantizationConfig.model_validate(qc)
    except Exception as e:
        raise _BadConfig(f"quantization_config does not parse as compressed-tensors: {str(e).splitlines()[0]}")


class _BadConfig(Exception):
    pass


def _args_dict(args) -> dict[str, Any] | None:
    if args is None:
        return None
    keep = ("num_bits", "type", "symmetric", "strategy", "group_size", "block_structure", "dynamic", "actorder")
    d = args.model_dump(mode="json") if hasattr(args, "model_dump") else dict(args)
    return {k: d.get(k) for k in keep if d.get(k) is not None}


def _groups(strategy: str, in_f: int, out_f: int, args) -> tuple[list[int] | None, str | None]:
    """Expected weight_scale shape for a strategy, and a problem when the group does not fit."""
    if strategy == "tensor":
        return [1], None
    if strategy == "channel":
        return [out_f, 1], None
    if strategy in ("group", "tensor_group"):
        g = args.group_size
        if not g or g <= 0:
            return None, "group strategy without a group size"
        problem = f"group size {g} does not divide input size {in_f}" if in_f % g else None
        return [out_f, math.ceil(in_f / g)], problem
    if strategy == "block" and args.block_structure:
        b0, b1 = args.block_structure
        return [math.ceil(out_f / b0), math.ceil(in_f / b1)], None
    return None, None


def _shape_eq(actual: list[int], expected: list[int]) -> bool:
    squeeze = lambda s: [d for d in s if d != 1] or [1]  # noqa: E731  [out,1] == [out]
    return squeeze(actual) == squeeze(expected)


def _check_ct_linear(mod: _Module, t: dict[str, TensorEntry], scheme, fmt: str) -> tuple[list[str], str]:
    """Problems of one targeted Linear under a compressed-tensors scheme, and how it is stored."""
    w = scheme.weights
    problems: list[str] = []
    if w is None:  # activation-only scheme: nothing to prove on the weights
        return problems, "16-bit weights (activation-only scheme)"
    bits, typ = w.num_bits, str(getattr(w.type, "value", w.type))
    in_f, out_f = mod.in_features, mod.out_features
    dense = t.get("weight")
    if fmt == "pack-quantized":
        packed = t.get("weight_packed")
        if packed is None:
            problems.append(f"no weight_packed (weight is {dense.dtype}, not quantized)" if dense is not None and dense.dtype in FLOAT16
                            else "no weight_packed tensor")
        else:
            if packed.dtype != "I32":
                problems.append(f"weight_packed is {packed.dtype}, expected I32")
            elif in_f and out_f and packed.shape != [out_f, math.ceil(in_f * bits / 32)]:
                problems.append(f"weight_packed shape {packed.shape} != [{out_f}, {math.ceil(in_f * bits / 32)}] "
                                f"for int{bits} [{out_f}, {in_f}]")
        storage = f"int{bits} packed in I32"
    elif fmt in ("int-quantized", "float-quantized", "naive-quantized"):
        want = {"float": {8: "F8_E4M3"}, "int": {8: "I8"}}.get(typ, {}).get(bits, "I8" if typ == "int" else "F8_E4M3")
        if dense is None:
            problems.append("no weight tensor")
        elif dense.dtype in FLOAT16:
            problems.append(f"weight is {dense.dtype}, not quantized (expected {want})")
        elif dense.dtype not in (want, "F8_E5M2" if typ == "float" else want):
            problems.append(f"weight is {dense.dtype}, expected {want}")
        elif in_f and out_f and dense.shape != [out_f, in_f]:
            problems.append(f"weight shape {dense.shape} != [{out_f}, {in_f}]")
        storage = f"{dense.dtype if dense is not None else want}"
    elif fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        if "weight_packed" not in t:
            problems.append("no weight_packed tensor")
        storage = f"{fmt.split('-')[0]} packed in U8"
    elif fmt == "dense":
        storage = f"{dense.dtype if dense is not None else '?'} (format 'dense': quantize-dequantized, not compressed)"
        return problems, storage
    else:
        return problems, f"{fmt} (not verified)"
    scale = t.get("weight_scale")
    strategy = str(getattr(w.strategy, "value", w.strategy))
    if scale is None:
        problems.append("no weight_scale")
    elif in_f and out_f:
        expected, group_problem = _groups(strategy, in_f, out_f, w)
        if group_problem:
            problems.append(group_problem)
        elif expected and not _shape_eq(scale.shape, expected):
            problems.append(f"weight_scale shape {scale.shape} != {expected} ({strategy}"
                            f"{f' {w.group_size}' if strategy == 'group' else ''})")
    if scale is not None:
        storage += f" + {scale.dtype} scales ({strategy}{f' {w.group_size}' if strategy in ('group', 'tensor_group') else ''})"
    if not w.symmetric:
        zp = t.get("weight_zero_point")
        if zp is None:
            problems.append("asymmetric weights but no weight_zero_point")
        else:
            storage += " + zero points"
    if str(getattr(w.actorder, "value", w.actorder)) == "group" and "weight_g_idx" not in t:
        problems.append("actorder=group but no weight_g_idx")
    a = scheme.input_activations
    if a is not None and not a.dynamic and "input_scale" not in t:
        problems.append("static input activations but no input_scale")
    return problems, storage


def _check_hub_linear(mod: _Module, t: dict[str, TensorEntry], method: str, bits: int, group: int) -> tuple[list[str], str]:
    """GPTQ / AWQ hub layout: qweight, qzeros, scales (, g_idx)."""
    problems: list[str] = []
    in_f, out_f = mod.in_features, mod.out_features
    pack = 32 // bits if bits in (2, 4, 8) else None
    q = t.get("qweight")
    if q is None:
        dense = t.get("weight")
        return [f"no qweight (weight is {dense.dtype})" if dense is not None else "no qweight"], ""
    for k in ("qzeros", "scales"):
        if k not in t:
            problems.append(f"no {k}")
    if in_f and out_f and pack:
        ngroups = math.ceil(in_f / group) if group > 0 else 1
        want_q = [in_f // pack, out_f] if method == "gptq" else [in_f, out_f // pack]
        if q.shape != want_q:
            problems.append(f"qweight shape {q.shape} != {want_q}")
        if "scales" in t and t["scales"].shape != [ngroups, out_f]:
            problems.append(f"scales shape {t['scales'].shape} != [{ngroups}, {out_f}] (group {group})")
        if group > 0 and in_f % group:
            problems.append(f"group size {group} does not divide input size {in_f}")
    storage = f"int{bits} packed in {q.dtype} (qweight) + {t['scales'].dtype if 'scales' in t else '?'} scales" \
              f" (group {group if group > 0 else 'channel'}) + qzeros"
    return problems, storage


# ---------------------------------------------------------------- the report
def _read_provenance(path: Path) -> dict[str, Any] | None:
    from ptq_deploy.compress import METADATA_FILE

    f = path / METADATA_FILE
    if not f.is_file():
        return None
    import json

    try:
        data = json.loads(f.read_text())
    except ValueError:
        return {"error": f"corrupt {METADATA_FILE}"}
    keep = ("kind", "scheme", "group_size", "kv_cache", "description")
    out = {k: data.get(k) for k in keep if k in data}
    src = data.get("source") or {}
    out["source"] = src.get("spec") or src.get("path")
    out["created_at"] = (data.get("provenance") or {}).get("created_at")
    return out


def inspect_checkpoint(cfg: InspectConfig) -> InspectReport:
    path = Path(cfg.checkpoint).expanduser()
    if not path.exists():
        raise UsageError(f"checkpoint not found: {cfg.checkpoint}")
    if not path.is_dir():
        raise UsageError(f"{cfg.checkpoint} is not a checkpoint directory")
    config = ckpt.read_config(path)
    findings: list[Finding] = []

    def find(sev: Severity, code: str, msg: str) -> None:
        findings.append(Finding(severity=sev, code=code, message=msg))

    # -- files and tensors
    files, missing = ckpt.weight_files(path)
    headers = [ckpt.read_safetensors_header(f) for f in files]
    for h in headers:
        if h.problem:
            find("error", "corrupt-file", h.problem)
    for m in missing:
        find("error", "missing-shard", f"the safetensors index names {m}, which is not in the checkpoint")
    if not files:
        other = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf")]
        if other:
            find("warning", "no-safetensors", f"no safetensors files (found {', '.join(other[:3])}); tensors not inspected")
        else:
            find("error", "no-weights", "no weight files (*.safetensors) in the checkpoint")
    tensors: dict[str, TensorEntry] = {}
    for h in headers:
        for t in h.tensors:
            if t.name in tensors:
                find("error", "duplicate-tensor", f"tensor {t.name} is stored in both {tensors[t.name].file} and {t.file}")
            tensors[t.name] = t

    # -- architecture
    meta = _meta_modules(path, config, cfg.trust_remote_code)
    if meta is None:
        modules, param_count = _modules_from_tensors(tensors), None
        if tensors:
            find("info", "architecture-from-tensors",
                 f"transformers cannot build {config.get('architectures') or config.get('model_type')} from config.json; "
                 "Linear layers recognised from tensor names")
    else:
        modules, param_count = meta
    by_module: dict[str, dict[str, TensorEntry]] = defaultdict(dict)
    for name, t in tensors.items():
        mod = _module_of(name, modules)
        by_module[mod][name[len(mod) + 1:] if name.startswith(mod + ".") else name] = t
    linear_mods = [m for m in modules.values() if "Linear" in m.classes]
    for m in linear_mods:  # logical shapes when the architecture is unknown
        if m.in_features is None:
            _shape_from_tensors(m, by_module.get(m.name, {}), config)

    # -- quantization config
    qc = config.get("quantization_config") or None
    scheme = ckpt.scheme_of(path)
    method = (qc or {}).get("quant_method")
    info = QuantizationInfo(method=method, format=(qc or {}).get("format"), status=(qc or {}).get("quantization_status"),
                            scheme=scheme.name, description=scheme.description,
                            kv_cache_scheme=(qc or {}).get("kv_cache_scheme"), version=(qc or {}).get("version"))
    ct = None
    if method == "compressed-tensors":
        try:
            ct = _ct_config(qc)
        except _BadConfig as e:
            find("error", "bad-quantization-config", str(e))
        if ct is not None:
            info.ignore = list(ct.ignore or [])
            info.targets = sorted({t for g in ct.config_groups.values() for t in g.targets})
            g0 = next(iter(ct.config_groups.values()), None)
            if g0 is not None:
                info.weights, info.input_activations = _args_dict(g0.weights), _args_dict(g0.input_activations)
            if ct.quantization_status and str(getattr(ct.quantization_status, "value", ct.quantization_status)) != "compressed":
                find("warning", "not-compressed", f"quantization_status is {ct.quantization_status.value!s}: weights are "
                     "not stored compressed")
    elif method in ("gptq", "awq"):
        info.format = qc.get("checkpoint_format") or qc.get("version") or method
        info.weights = {k: qc.get(k) for k in ("bits", "group_size", "sym", "desc_act", "zero_point") if k in qc}
        info.ignore = list(qc.get("modules_to_not_convert") or []) + ["lm_head"]
        info.targets = ["Linear"]
    elif qc:
        info.ignore = list(qc.get("ignored_layers") or qc.get("modules_to_not_convert") or [])
        if method not in (None, "fp8"):
            find("warning", "unknown-method", f"quant_method {method!r}: tensors are listed but not verified against it")

    # -- per-Linear proof
    linears: list[LinearLayer] = []
    for m in linear_mods:
        t = by_module.get(m.name, {})
        lin = LinearLayer(name=m.name, in_features=m.in_features, out_features=m.out_features, status="16-bit")
        lin.bytes = sum(e.nbytes for k, e in t.items() if k != "bias" and not k.startswith(("input_", "output_")))
        if m.tied_to and not t:
            lin.status, lin.reason = "tied", f"tied to {m.tied_to}"
            linears.append(lin)
            continue
        if not t:
            lin.status, lin.reason = "missing", "no tensors in the checkpoint"
            lin.problems.append("no tensors in the checkpoint")
            linears.append(lin)
            continue
        targeted_scheme, ignored_by = None, None
        if ct is not None:
            for g in ct.config_groups.values():
                if any(_matches(m, tg) for tg in g.targets):
                    targeted_scheme = g
                    break
            ignored_by = next((ig for ig in (ct.ignore or []) if _matches(m, ig)), None)
            if targeted_scheme is not None and ignored_by is None:
                fmt = targeted_scheme.format or ct.format or "dense"
                fmt = str(getattr(fmt, "value", fmt))
                lin.problems, lin.storage = _check_ct_linear(m, t, targeted_scheme, fmt)
                lin.status = "broken" if lin.problems else "quantized"
        elif method in ("gptq", "awq"):
            ignored_by = next((ig for ig in info.ignore if m.name == ig or m.name.endswith("." + ig)), None)
            if ignored_by is None:
                bits, group = int(qc.get("bits", 4)), int(qc.get("group_size", -1) or -1)
                lin.problems, lin.storage = _check_hub_linear(m, t, method, bits, group)
                lin.status = "broken" if lin.problems else "quantized"
        elif method == "fp8":
            ignored_by = next((ig for ig in info.ignore if ig in m.name), None)
            if ignored_by is None and "weight" in t:
                if t["weight"].dtype.startswith("F8"):
                    lin.status, lin.storage = "quantized", f"{t['weight'].dtype} + scales"
                else:
                    lin.status, lin.problems = "broken", [f"weight is {t['weight'].dtype}, not FP8"]
        cut = [k for k, e in t.items() if e.truncated]
        if cut:
            lin.status = "broken"
            lin.problems.append(f"{', '.join(cut)} cut off (truncated {t[cut[0]].file})")
        if lin.status == "16-bit":
            w = t.get("weight")
            lin.storage = w.dtype if w is not None else ", ".join(sorted(e.dtype for e in t.values()))
            lin.reason = (f"ignore: {ignored_by}" if ignored_by else "not targeted by the quantization config"
                          if qc else "unquantized checkpoint")
            if any(k in t for k in ("weight_packed", "qweight")) or (w is not None and w.dtype not in FLOAT16):
                lin.status, lin.storage = "quantized", f"{(w or t.get('weight_packed') or t.get('qweight')).dtype}"
                find("warning", "unexpected-quantized-layer",
                     f"{m.name} is stored quantized ({lin.storage}) but the config does not target it ({lin.reason})")
        if lin.in_features and lin.out_features and lin.bytes:
            lin.bits_per_weight = lin.bytes * 8 / (lin.in_features * lin.out_features)
        linears.append(lin)
    _summarise_proof(info, scheme, qc, linears, find)
    _check_kv_cache(path, info, modules, by_module, headers, find)
    prov = _read_provenance(path)
    _check_provenance(prov, scheme, info, find)

    # -- aggregates
    by_type: dict[str, Aggregate] = {}
    by_dtype: dict[str, Aggregate] = {}
    logical = {lin.name: (lin.in_features or 0) * (lin.out_features or 0) for lin in linears}
    for name, t in tensors.items():
        mod = _module_of(name, modules)
        key = _layer_type(mod)
        agg = by_type.setdefault(key, Aggregate(module_class=(modules[mod].classes[0] if mod in modules and modules[mod].classes else None)))
        suffix = name[len(mod) + 1:]
        is_weight = suffix in ("weight", "weight_packed", "qweight")
        params = logical.get(mod) if is_weight and logical.get(mod) else (t.numel if not _is_aux(suffix) else 0)
        for a in (agg, by_dtype.setdefault(t.dtype, Aggregate())):
            a.tensors += 1
            a.bytes += t.nbytes
            a.params += params
        if t.dtype not in agg.dtypes:
            agg.dtypes.append(t.dtype)
    counts = Counter(_layer_type(m) for m in {_module_of(n, modules) for n in tensors})
    for key, n in counts.items():
        by_type[key].modules = n

    tensor_bytes = sum(t.nbytes for t in tensors.values())
    if param_count is None:
        param_count = sum(a.params for a in by_type.values()) or None
        shape_source = "tensors"
    else:
        shape_source = "config"
    bf16 = 2 * param_count if param_count else None
    q_lin = [lin for lin in linears if lin.status == "quantized" and lin.bits_per_weight]
    all_lin = [lin for lin in linears if lin.bits_per_weight]
    bpw = lambda ls: (sum(l.bytes for l in ls) * 8 / sum(l.in_features * l.out_features for l in ls)) if ls else None  # noqa: E731,E741

    # -- hardware fit
    hw_fit = _hardware_fit(cfg.device, scheme, info, tensor_bytes)
    if not hw_fit.support.runnable:
        find("warning", "not-runnable",
             f"{scheme.name} does not run on {hw_fit.device}: {hw_fit.support.reason}")
    elif not hw_fit.support.fast_path and hw_fit.support.reason:
        find("info", "slow-path", f"{scheme.name} on {hw_fit.device}: {hw_fit.support.reason}")
    if hw_fit.kv_cache is not None and not hw_fit.kv_cache.runnable:
        find("warning", "kv-cache-not-runnable", f"the FP8 KV-cache scales cannot be used on {hw_fit.device} "
             f"({hw_fit.kv_cache.reason}); vLLM must run it with kv_cache_dtype=bfloat16")
    if not hw_fit.fits_in_memory:
        find("warning", "memory", f"weights need {tensor_bytes / 2**30:.1f} GiB, the device has "
             f"{hw_fit.device_memory_bytes / 2**30:.1f} GiB")

    report = InspectReport(
        checkpoint=str(path.resolve()), architecture=(config.get("architectures") or [None])[0],
        model_type=config.get("model_type"), shape_source=shape_source, provenance=prov, quantization=info,
        files=headers, disk_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        tensor_bytes=tensor_bytes, bf16_bytes=bf16,
        compression_ratio=(bf16 / tensor_bytes) if bf16 and tensor_bytes else None,
        linear_bits_per_weight=bpw(q_lin), all_linear_bits_per_weight=bpw(all_lin),
        by_layer_type=dict(sorted(by_type.items())), by_dtype=dict(sorted(by_dtype.items())), linears=linears,
        hardware=hw_fit, findings=findings,
    )
    if cfg.runtime:
        report.runtime = _runtime(path, config, scheme, info, find)
    report.findings = sorted(findings, key=lambda f: ("error", "warning", "info").index(f.severity))
    return report


def _is_aux(suffix: str) -> bool:
    return suffix in QUANT_SUFFIXES or suffix.endswith(("_scale", "_zero_point", "g_idx")) or suffix in ("qzeros", "scales")


def _shape_from_tensors(m: _Module, t: dict[str, TensorEntry], config: dict[str, Any]) -> None:
    qc = config.get("quantization_config") or {}
    if "weight" in t and len(t["weight"].shape) == 2:
        m.out_features, m.in_features = t["weight"].shape
    elif "weight_packed" in t and t["weight_packed"].dtype == "I32":
        groups = qc.get("config_groups") or {}
        bits = next(iter(groups.values()), {}).get("weights", {}).get("num_bits", 4) if groups else 4
        m.out_features, m.in_features = t["weight_packed"].shape[0], t["weight_packed"].shape[1] * 32 // bits
    elif "qweight" in t and "scales" in t:
        m.out_features = t["scales"].shape[1]
        bits = int(qc.get("bits", 4))
        q = t["qweight"].shape
        m.in_features = q[0] * 32 // bits if qc.get("quant_method") == "gptq" else q[0]


def _summarise_proof(info: QuantizationInfo, scheme, qc, linears: list[LinearLayer], find) -> None:
    targeted = [lin for lin in linears if lin.status in ("quantized", "broken") and lin.storage]
    broken = [lin for lin in linears if lin.status == "broken"]
    missing = [lin for lin in linears if lin.status == "missing"]
    if missing:
        find("error", "missing-layers", f"{len(missing)} Linear layers have no tensors in the checkpoint "
             f"(e.g. {missing[0].name})")
    if not qc:
        return
    if info.method in ("compressed-tensors", "gptq", "awq", "fp8") and not targeted:
        find("error", "no-targeted-layers", f"the quantization config ({scheme.name}) targets "
             f"{info.targets or '?'} but matches no Linear layer of the checkpoint")
        return
    if broken:
        first = broken[0]
        kinds = Counter(p.split(" (")[0] for lin in broken for p in lin.problems)
        if len(broken) == len(targeted):
            find("error", "claimed-scheme-not-in-tensors",
                 f"config claims {scheme.name} ({info.format}) but none of its {len(targeted)} targeted Linear layers "
                 f"carries it: {first.problems[0]} (e.g. {first.name})")
        else:
            find("error", "inconsistent-layers",
                 f"{len(broken)} of {len(targeted)} targeted Linear layers do not match the config: "
                 f"{first.problems[0]} (e.g. {first.name})")
        if len(kinds) > 1:
            find("info", "problem-kinds", "problems: " + "; ".join(f"{k}: {n}" for k, n in kinds.most_common()))
    ok = [lin for lin in targeted if lin.status == "quantized"]
    if ok:
        storages = Counter(lin.storage for lin in ok)
        find("info", "proof", f"{len(ok)}/{len(targeted)} targeted Linear layers carry "
             + "; ".join(f"{s}" + (f" [{n}]" if len(storages) > 1 else "") for s, n in storages.most_common()))
    left = [lin for lin in linears if lin.status in ("16-bit", "tied")]
    if left:
        reasons = Counter(lin.reason for lin in left)
        find("info", "16-bit-layers", f"{len(left)} Linear layers left 16-bit: "
             + "; ".join(f"{', '.join(l.name for l in left if l.reason == r)[:120]} ({r})" for r in reasons))  # noqa: E741


def _check_kv_cache(path, info: QuantizationInfo, modules, by_module, headers, find) -> None:
    if not info.kv_cache_scheme:
        return
    attn = sorted({m for m, t in by_module.items() if "k_scale" in t or "v_scale" in t})
    expected = sorted(n for n, m in modules.items() if any(c.endswith("Attention") for c in m.classes[:1]))
    if not expected:  # architecture unknown: attention modules are the parents of k_proj
        expected = sorted({n.rsplit(".", 1)[0] for n in modules if n.endswith(".k_proj")})
    lacking = [m for m in expected if not {"k_scale", "v_scale"} <= set(by_module.get(m, {}))]
    if lacking:
        find("error", "kv-cache-scales-missing",
             f"config declares a KV-cache scheme ({info.kv_cache_scheme.get('type')}{info.kv_cache_scheme.get('num_bits')}) "
             f"but {len(lacking)} of {len(expected)} attention layers have no k_scale/v_scale (e.g. {lacking[0]}): "
             "the KV-cache quantization never ran")
        return
    if any(h.problem for h in headers):
        return
    try:  # the scales are scalars: reading them is cheap, and all-1.0 means never calibrated
        from safetensors import safe_open

        values = []
        for h in headers:
            with safe_open(str(Path(path) / h.name), "pt") as f:
                values += [float(f.get_tensor(t.name).float().flatten()[0]) for t in h.tensors
                           if t.name.endswith(("k_scale", "v_scale")) and t.numel == 1]
    except Exception:
        return
    if values and all(v == 1.0 for v in values):
        find("error", "kv-cache-uncalibrated", f"all {len(values)} KV-cache scales are exactly 1.0: "
             "the KV-cache scales were never calibrated")
    else:
        find("info", "kv-cache", f"{len(attn)} attention layers carry calibrated k_scale/v_scale")


def _check_provenance(prov, scheme, info: QuantizationInfo, find) -> None:
    if not prov:
        return
    if "error" in prov:
        find("warning", "provenance", prov["error"])
        return
    from ptq_deploy import schemes

    name = prov.get("scheme")
    try:
        claimed = schemes.get(name) if name else None
    except PtqError:
        claimed = None
    if claimed is not None:
        if (claimed.weights, claimed.activations) != (scheme.weights, scheme.activations):
            find("error", "provenance-mismatch",
                 f"ptq_deploy.json says {name} ({claimed.weights} weights, {claimed.activations} activations) but "
                 f"config.json carries {scheme.name} ({scheme.weights}/{scheme.activations})")
        elif prov.get("group_size") and scheme.group_size and prov["group_size"] != scheme.group_size:
            find("error", "provenance-mismatch", f"ptq_deploy.json says group size {prov['group_size']}, "
                 f"config.json has {scheme.group_size}")
    if prov.get("kv_cache") not in (None, "none") and not info.kv_cache_scheme:
        find("error", "kv-cache-not-applied", f"ptq_deploy.json says kv_cache={prov['kv_cache']} but config.json has "
             "no kv_cache_scheme: the KV-cache quantization never ran")


def _hardware_fit(device: str | None, scheme, info: QuantizationInfo, weight_bytes: int) -> HardwareFit:
    from ptq_deploy.hardware import detect
    from ptq_deploy.support import hardware_for, kv_cache_support, scheme_support

    hw = hardware_for(device, detect())
    sup = scheme_support(scheme, hw)
    kv = None
    if info.kv_cache_scheme:
        kv_type = "fp8" if info.kv_cache_scheme.get("type") == "float" else "int8"
        kv = kv_cache_support(kv_type, hw)
    mem = hw.gpus[0].memory_total_bytes if hw.gpus else hw.memory_total_bytes
    name = hw.summary() if device in (None, "local", "cpu") else f"{device} ({hw.summary()})"
    return HardwareFit(device=name, support=sup, kv_cache=kv, weight_memory_bytes=weight_bytes,
                       device_memory_bytes=mem, fits_in_memory=weight_bytes < mem)


# ---------------------------------------------------------------- --runtime
def vllm_linear_kernels(model) -> dict[str, int]:
    """Runs inside a vLLM worker: ``"method / scheme / kernel" -> count`` over the Linear modules."""
    from vllm.model_executor.layers.linear import LinearBase

    found: Counter = Counter()
    for _, mod in model.named_modules():
        if not isinstance(mod, LinearBase):
            continue
        qm = getattr(mod, "quant_method", None)
        parts = [type(qm).__name__ if qm is not None else "none"]
        sch = getattr(mod, "scheme", None) or getattr(qm, "scheme", None)
        if sch is not None:
            parts.append(type(sch).__name__)
        kernels = [type(v).__name__ for obj in (sch, qm) if obj is not None for v in vars(obj).values()
                   if "Kernel" in type(v).__name__]
        parts += sorted(set(kernels)) or []
        found[" / ".join(parts)] += 1
    return dict(found)


def _runtime(path: Path, config, scheme, info: QuantizationInfo, find) -> RuntimeInfo:
    import os

    from ptq_deploy import engine
    from ptq_deploy.hardware import detect
    from ptq_deploy.support import kv_cache_support, scheme_support

    hw = detect()
    sup = scheme_support(scheme, hw)
    if not sup.runnable:
        return RuntimeInfo(loaded=False, not_runnable=str(NotRunnableHere(
            f"{scheme.name} checkpoint cannot run in vLLM here: {sup.reason}")))
    kv_dtype = "auto"
    if info.kv_cache_scheme and not kv_cache_support("fp8", hw).runnable:
        kv_dtype = "bfloat16"
    max_len = min(2048, int(config.get("max_position_embeddings") or 2048))
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model ships a function to workers
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # keep stdout for the report (--json)
    try:
        llm, einfo = engine.load(engine.EngineConfig(model=str(path), max_model_len=max_len, kv_cache_dtype=kv_dtype))
    except NotRunnableHere as e:
        return RuntimeInfo(loaded=False, not_runnable=str(e))
    except PtqError as e:
        find("error", "runtime-load-failed", str(e))
        return RuntimeInfo(loaded=False)
    try:
        try:
            kernels: dict[str, int] = {}
            for part in llm.apply_model(vllm_linear_kernels):
                for k, n in part.items():
                    kernels[k] = kernels.get(k, 0) + n
        except Exception as e:  # noqa: BLE001  the kernel walk is best effort
            kernels = {f"unknown ({type(e).__name__})": 0}
    finally:
        engine.shutdown(llm)
    if scheme.kind != "dense" and kernels and all(k.startswith("UnquantizedLinearMethod") for k in kernels):
        find("error", "runtime-not-quantized", f"vLLM loaded {scheme.name} with unquantized Linear layers only")
    return RuntimeInfo(loaded=True, quantization=einfo.quantization, dtype=einfo.dtype, kv_cache_dtype=kv_dtype,
                       load_time_s=einfo.load_time_s, linear_kernels=kernels)


# ---------------------------------------------------------------- console report
def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f} MiB"


def render(rep: InspectReport, console) -> None:
    """Print the report with rich (the CLI's human output)."""
    from rich.markup import escape
    from rich.table import Table

    q = rep.quantization
    console.print(f"[bold]{escape(rep.checkpoint)}[/bold]")
    console.print(f"architecture: {rep.architecture or '?'} ({rep.model_type or '?'}); "
                  f"quantization: [bold]{q.scheme}[/bold] "
                  + (f"({q.method}, format {q.format}, status {q.status})" if q.method else "(none: dense checkpoint)"))
    if q.weights:
        console.print(f"  weights: {q.weights}" + (f"; input activations: {q.input_activations}" if q.input_activations else "")
                      + (f"; targets {q.targets}, ignore {q.ignore}" if q.targets else ""), markup=False)
    if q.kv_cache_scheme:
        console.print(f"  kv-cache scheme: {_args_dict(q.kv_cache_scheme)}", markup=False)
    if rep.provenance:
        p = rep.provenance
        console.print(f"  made by ptq-deploy: scheme {p.get('scheme')}, group {p.get('group_size') or '-'}, "
                      f"kv-cache {p.get('kv_cache')}, from {p.get('source')} ({p.get('created_at') or '?'})", markup=False)

    t = Table(title="tensors by layer type")
    for c in ("layer type", "class", "modules", "tensors", "dtypes", "weights", "size", "bits/weight"):
        t.add_column(c, justify="right" if c in ("modules", "tensors", "weights", "size", "bits/weight") else "left",
                     no_wrap=c in ("layer type", "class", "size"))
    lin_bits: dict[str, list[LinearLayer]] = defaultdict(list)
    for lin in rep.linears:
        lin_bits[_layer_type(lin.name)].append(lin)
    for key, a in rep.by_layer_type.items():
        ls = [l for l in lin_bits.get(key, []) if l.bits_per_weight]  # noqa: E741
        bits = sum(l.bytes for l in ls) * 8 / sum(l.in_features * l.out_features for l in ls) if ls else None  # noqa: E741
        t.add_row(key, a.module_class or "-", str(a.modules), str(a.tensors), " ".join(a.dtypes), f"{a.params:,}",
                  _mib(a.bytes), f"{bits:.2f}" if bits else "-")
    console.print(t)
    t = Table(title="tensors by dtype")
    for c in ("dtype", "tensors", "size"):
        t.add_column(c)
    for k, a in rep.by_dtype.items():
        t.add_row(k, str(a.tensors), _mib(a.bytes))
    console.print(t)
    ratio = f"{rep.compression_ratio:.2f}x" if rep.compression_ratio else "-"
    console.print(f"size: {_mib(rep.tensor_bytes)} of tensors in {len(rep.files)} safetensors file(s), "
                  f"{_mib(rep.disk_bytes)} on disk; BF16 equivalent {_mib(rep.bf16_bytes)} (from the {rep.shape_source}) "
                  f"-> compression [bold]{ratio}[/bold]")
    if rep.all_linear_bits_per_weight:
        console.print("bits per weight (Linear layers): "
                      + (f"[bold]{rep.linear_bits_per_weight:.3f}[/bold] quantized, " if rep.linear_bits_per_weight else "")
                      + f"{rep.all_linear_bits_per_weight:.3f} all (scales, zero points included)")

    h = rep.hardware
    s = h.support
    console.print(f"hardware fit on {escape(h.device)}: "
                  + ("[green]runs[/green]" if s.runnable else "[red]does not run[/red]")
                  + f", kernel {escape(s.kernel)}, fast path {'yes' if s.fast_path else 'no'}"
                  + (f" ({escape(s.reason)})" if s.reason else "")
                  + f"; weights need {_mib(h.weight_memory_bytes)} of {h.device_memory_bytes / 2**30:.0f} GiB")
    if h.kv_cache:
        console.print(f"  kv-cache: {'runs' if h.kv_cache.runnable else 'does not run'} ({escape(h.kv_cache.kernel)}"
                      f"{'; ' + escape(h.kv_cache.reason) if h.kv_cache.reason else ''})")
    if rep.runtime:
        r = rep.runtime
        if r.loaded:
            console.print(f"vLLM: quantization={r.quantization}, dtype {r.dtype}, kv-cache {r.kv_cache_dtype}, "
                          f"loaded in {r.load_time_s:.1f} s; linear kernels:")
            for k, n in r.linear_kernels.items():
                console.print(f"  {n:4d} x {escape(k)}")
        elif r.not_runnable:
            console.print(f"vLLM: [yellow]not loaded[/yellow]: {escape(r.not_runnable)}")
        else:
            console.print("vLLM: [red]load failed[/red] (see findings)")

    style = {"error": "red", "warning": "yellow", "info": "dim"}
    console.print("findings:" if rep.findings else "findings: none")
    for f in rep.findings:
        console.print(f"  [{style[f.severity]}]{f.severity:7s}[/{style[f.severity]}] {escape(f.message)}")
    n = len(rep.errors)
    console.print("[green]OK[/green]: the checkpoint carries what its config claims" if not n else
                  f"[red]{n} error finding(s)[/red]")
