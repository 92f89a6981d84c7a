"""Per-format proof that a targeted Linear layer carries what the quantization config claims.

``VERIFIERS`` is keyed by ``quant_method`` (compressed-tensors, gptq, awq, fp8), or ``fake-quant`` for a
checkpoint whose ``ptq_deploy.json`` declares a POT / APOT grid (``levels``); each returns the layer's
problems and a description of its storage. ``verify_linears`` applies them to every
Linear of the architecture and decides its status (quantized / 16-bit / tied / broken / missing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptq_deploy.checkpoint import Quantization, TensorEntry
from ptq_deploy.checkpoint.grid import FakeQuant
from ptq_deploy.inspection.architecture import Module
from ptq_deploy.inspection.grid_check import verify_fake_quant
from ptq_deploy.inspection.report import LinearLayer

FLOAT16 = {"BF16", "F16", "F32", "F64"}


def _matches(mod: Module, target: str) -> bool:
    from compressed_tensors.utils.match import match_name  # imports torch

    return match_name(mod.name, target) or target in mod.classes or (target == "Linear" and "LinearBase" in mod.classes)


def ct_config(qc: dict[str, Any]):
    from compressed_tensors.quantization import QuantizationConfig  # imports torch

    try:
        return QuantizationConfig.model_validate(qc)
    except Exception as e:
        raise BadConfig(f"quantization_config does not parse as compressed-tensors: {str(e).splitlines()[0]}")


class BadConfig(Exception):
    pass


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


def _squeeze(shape: list[int]) -> list[int]:
    return [d for d in shape if d != 1] or [1]


def _shape_eq(actual: list[int], expected: list[int]) -> bool:
    """``[out, 1] == [out]``: scales are stored with or without their unit dimension."""
    return _squeeze(actual) == _squeeze(expected)


def _check_ct_linear(mod: Module, t: dict[str, TensorEntry], scheme, fmt: str,
                     read: Callable[[TensorEntry], Any] | None = None) -> tuple[list[str], str]:
    """Problems of one targeted Linear under a compressed-tensors scheme, and how it is stored. ``read`` loads a
    tensor's values (scales, FP8 weights), for the checks a header cannot answer; None: headers only."""
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
        # compressed-tensors >= 0.19 packs densely (ceil(in x bits / 32) words), older releases 32 // bits values
        # per word: the same layout unless bits does not divide 32 (int3), where readers of one cannot read the other
        dense_w, padded_w = (math.ceil(in_f * bits / 32), math.ceil(in_f / (32 // bits))) if in_f else (0, 0)
        storage = f"int{bits} packed in I32"
        if packed is not None:
            if packed.dtype != "I32":
                problems.append(f"weight_packed is {packed.dtype}, expected I32")
            elif in_f and out_f and packed.shape not in ([out_f, dense_w], [out_f, padded_w]):
                problems.append(f"weight_packed shape {packed.shape} != [{out_f}, {dense_w}] "
                                f"for int{bits} [{out_f}, {in_f}]")
            elif dense_w != padded_w:
                storage += (" (dense bit layout, compressed-tensors >= 0.19)" if packed.shape[1] == dense_w
                            else " (32 // bits per word, compressed-tensors < 0.19)")
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
    elif fmt in FP4_FORMATS:
        packed = t.get("weight_packed")
        storage = f"{fmt.split('-')[0]} (FP4 E2M1) packed two per U8"
        if packed is None:
            problems.append(f"no weight_packed (weight is {dense.dtype}, not quantized)" if dense is not None
                            else "no weight_packed tensor")
        elif packed.dtype != "U8":
            problems.append(f"weight_packed is {packed.dtype}, expected U8 (two FP4 values per byte)")
        elif in_f and out_f and packed.shape != [out_f, math.ceil(in_f / 2)]:
            problems.append(f"weight_packed shape {packed.shape} != [{out_f}, {math.ceil(in_f / 2)}] for FP4 "
                            f"[{out_f}, {in_f}] (two values per byte)")
        if fmt.startswith("nvfp4"):
            g = t.get("weight_global_scale")
            if g is None:
                problems.append("no weight_global_scale (NVFP4 scales its FP8 group scales per tensor)")
            elif g.numel != 1 or g.dtype not in FLOAT16:
                problems.append(f"weight_global_scale is {g.dtype} {g.shape}, expected one float")
            elif read is not None:
                problems += _positive_finite("weight_global_scale", read(g))
    elif fmt == "mxfp8-quantized":
        storage = "F8_E4M3"
        if dense is None or dense.dtype != "F8_E4M3":
            problems.append(f"weight is {dense.dtype if dense is not None else 'missing'}, expected F8_E4M3")
        elif in_f and out_f and dense.shape != [out_f, in_f]:
            problems.append(f"weight shape {dense.shape} != [{out_f}, {in_f}]")
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
        want_scale = SCALE_DTYPES.get(fmt)
        if want_scale and scale.dtype != want_scale:
            problems.append(f"weight_scale is {scale.dtype}, expected {want_scale} ({SCALE_NAMES[want_scale]} for {fmt})")
        elif read is not None and (typ == "float" or want_scale):
            problems += _positive_finite("weight_scale", read(scale))
        if read is not None and dense is not None and dense.dtype == "F8_E4M3" and not problems:
            problems += _no_nan_codes("weight", read(dense))
        detail = (f" {w.group_size}" if strategy in ("group", "tensor_group") else
                  f" {'x'.join(map(str, w.block_structure))}" if strategy == "block" and w.block_structure else "")
        storage += f" + {scale.dtype} scales ({strategy}{detail})"
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
    if a is not None and str(getattr(a.dynamic, "value", a.dynamic)) == "local":  # NVFP4 activations
        if "input_global_scale" not in t:
            problems.append("FP4 activations with local scales but no input_global_scale")
        elif read is not None:
            problems += _positive_finite("input_global_scale", read(t["input_global_scale"]))
    return problems, storage


FP4_FORMATS = ("nvfp4-pack-quantized", "mxfp4-pack-quantized")
# the scale dtype each format stores: NVFP4 FP8 E4M3 group scales, MX E8M0 (a power-of-two exponent in a byte)
SCALE_DTYPES = {"nvfp4-pack-quantized": "F8_E4M3", "mxfp4-pack-quantized": "U8", "mxfp8-quantized": "U8"}
SCALE_NAMES = {"F8_E4M3": "FP8 E4M3", "U8": "E8M0"}
E8M0_NAN = 0xFF


def _positive_finite(name: str, values) -> list[str]:
    """Scales must be finite and > 0: an E8M0 byte 0xFF is NaN, FP8/float scales must be finite positive."""
    import torch

    if values is None:
        return []
    if values.dtype == torch.uint8:  # E8M0: 2^(byte - 127), every byte but 0xFF a scale
        bad = int((values == E8M0_NAN).sum())
        return [f"{name}: {bad} E8M0 scales are 0xFF (NaN)"] if bad else []
    v = values.float()
    bad = int((~torch.isfinite(v) | (v <= 0)).sum())
    return [f"{name}: {bad} of {v.numel()} scales are not finite and positive"] if bad else []


def _no_nan_codes(name: str, values) -> list[str]:
    """FP8 E4M3 (fn) has no infinities; its NaN codes are 0x7F / 0xFF: no quantizer writes them."""
    import torch

    if values is None:
        return []
    bad = int(torch.isnan(values.float()).sum())
    return [f"{name}: {bad} FP8 values are NaN codes (off the E4M3 grid)"] if bad else []


def _check_hub_linear(mod: Module, t: dict[str, TensorEntry], method: str, bits: int, group: int) -> tuple[list[str], str]:
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



class VerifyContext:
    """What every verifier may need: the parsed quantization, compressed-tensors' own config object, and for
    a fake-quantized checkpoint its declared grid and where its weights are."""

    def __init__(self, q: Quantization, ct: Any | None, fake_quant: FakeQuant | None = None,
                 path: Path | None = None):
        self.q, self.ct, self.fake_quant, self.path = q, ct, fake_quant, path
        self._files: dict[str, Any] = {}

    def read(self, entry: TensorEntry):
        """A tensor's values (torch), from the checkpoint's safetensors file (kept open for the next reads); None
        when the file does not open (a cut file: the header checks report it)."""
        if entry.file not in self._files:
            from safetensors import safe_open  # imports torch for "pt"

            try:
                self._files[entry.file] = safe_open(str(Path(self.path) / entry.file), "pt")
            except Exception:  # safetensors' own error types: the file is reported by the file checks
                self._files[entry.file] = None
        f = self._files[entry.file]
        return f.get_tensor(entry.name) if f is not None else None

    @property
    def method(self) -> str | None:
        """The verifier's key: the config's quant method, else ``fake-quant`` when ptq_deploy.json declares a grid."""
        return self.q.method or ("fake-quant" if self.fake_quant is not None else None)


# (module, its tensors, context) -> (ignored by, (problems, storage) when the layer is targeted)
Verifier = Callable[[Module, dict[str, TensorEntry], VerifyContext], tuple[str | None, tuple[list[str], str] | None]]


def _verify_ct(m: Module, t: dict[str, TensorEntry], ctx: VerifyContext):
    if ctx.ct is None:
        return None, None
    group = next((g for g in ctx.ct.config_groups.values() if any(_matches(m, tg) for tg in g.targets)), None)
    ignored_by = next((ig for ig in (ctx.ct.ignore or []) if _matches(m, ig)), None)
    if group is None or ignored_by is not None:
        return ignored_by, None
    fmt = group.format or ctx.ct.format or "dense"
    readable = ctx.path is not None and not any(e.truncated for e in t.values())  # a cut file: headers only
    return None, _check_ct_linear(m, t, group, str(getattr(fmt, "value", fmt)), ctx.read if readable else None)


def _verify_hub(m: Module, t: dict[str, TensorEntry], ctx: VerifyContext):
    q = ctx.q
    ignored_by = next((ig for ig in q.ignore if m.name == ig or m.name.endswith("." + ig)), None)
    if ignored_by is not None:
        return ignored_by, None
    return None, _check_hub_linear(m, t, q.method, q.weight_bits, q.group_size or -1)


def _verify_fp8(m: Module, t: dict[str, TensorEntry], ctx: VerifyContext):
    ignored_by = next((ig for ig in ctx.q.ignore if ig in m.name), None)
    if ignored_by is not None or "weight" not in t:
        return ignored_by, None
    w = t["weight"]
    return None, (([], f"{w.dtype} + scales") if w.dtype.startswith("F8") else ([f"weight is {w.dtype}, not FP8"], ""))


VERIFIERS: dict[str, Verifier] = {"compressed-tensors": _verify_ct, "gptq": _verify_hub, "awq": _verify_hub,
                                  "fp8": _verify_fp8, "fake-quant": verify_fake_quant}


def verify_linears(linear_mods: list[Module], by_module: dict[str, dict[str, TensorEntry]], ctx: VerifyContext,
                   find) -> list[LinearLayer]:
    """One ``LinearLayer`` per Linear module, with its status, storage and problems."""
    verifier = VERIFIERS.get(ctx.method or "")
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
        ignored_by, checked = verifier(m, t, ctx) if verifier else (None, None)
        if checked is not None:
            lin.problems, lin.storage = checked
            lin.status = "broken" if lin.problems else "quantized"
        cut = [k for k, e in t.items() if e.truncated]
        if cut:
            lin.status = "broken"
            lin.problems.append(f"{', '.join(cut)} cut off (truncated {t[cut[0]].file})")
        if lin.status == "16-bit":
            _left_16bit(lin, t, ignored_by, ctx.method is not None, find)
        if lin.in_features and lin.out_features and lin.bytes:
            lin.bits_per_weight = lin.bytes * 8 / (lin.in_features * lin.out_features)
        linears.append(lin)
    return linears


def _left_16bit(lin: LinearLayer, t: dict[str, TensorEntry], ignored_by: str | None, quantized_config: bool,
                find) -> None:
    w = t.get("weight")
    lin.storage = w.dtype if w is not None else ", ".join(sorted(e.dtype for e in t.values()))
    lin.reason = (f"ignore: {ignored_by}" if ignored_by else "not targeted by the quantization config"
                  if quantized_config else "unquantized checkpoint")
    if any(k in t for k in ("weight_packed", "qweight")) or (w is not None and w.dtype not in FLOAT16):
        lin.status, lin.storage = "quantized", f"{(w or t.get('weight_packed') or t.get('qweight')).dtype}"
        find("warning", "unexpected-quantized-layer",
             f"{lin.name} is stored quantized ({lin.storage}) but the config does not target it ({lin.reason})")
