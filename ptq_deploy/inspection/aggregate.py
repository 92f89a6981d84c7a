"""Tensor totals of a checkpoint: by layer type and by dtype, logical parameters, bits per weight."""

from __future__ import annotations

from collections import Counter

from ptq_deploy.checkpoint import TensorEntry
from ptq_deploy.inspection.architecture import Module, layer_type, module_of
from ptq_deploy.inspection.report import Aggregate, LinearLayer

QUANT_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
                  "weight_global_scale", "qweight", "qzeros", "scales", "g_idx", "weight_scale_inv")


def _is_aux(suffix: str) -> bool:
    """Scales, zero points and indices: bytes on disk, but no logical weights."""
    return suffix in QUANT_SUFFIXES or suffix.endswith(("_scale", "_zero_point", "g_idx"))


def bits_per_weight(linears: list[LinearLayer]) -> float | None:
    """Stored bits (scales included) per logical weight of these Linear layers."""
    if not linears:
        return None
    return sum(lin.bytes for lin in linears) * 8 / sum(lin.in_features * lin.out_features for lin in linears)


def aggregate(tensors: dict[str, TensorEntry], modules: dict[str, Module],
              linears: list[LinearLayer]) -> tuple[dict[str, Aggregate], dict[str, Aggregate]]:
    """``(by layer type, by dtype)``; a packed weight counts its unpacked (logical) values."""
    by_type: dict[str, Aggregate] = {}
    by_dtype: dict[str, Aggregate] = {}
    logical = {lin.name: (lin.in_features or 0) * (lin.out_features or 0) for lin in linears}
    for name, t in tensors.items():
        mod = module_of(name, modules)
        cls = modules[mod].classes[0] if mod in modules and modules[mod].classes else None
        agg = by_type.setdefault(layer_type(mod), Aggregate(module_class=cls))
        suffix = name[len(mod) + 1:]
        is_weight = suffix in ("weight", "weight_packed", "qweight")
        params = logical.get(mod) if is_weight and logical.get(mod) else (t.numel if not _is_aux(suffix) else 0)
        for a in (agg, by_dtype.setdefault(t.dtype, Aggregate())):
            a.tensors += 1
            a.bytes += t.nbytes
            a.params += params
        if t.dtype not in agg.dtypes:
            agg.dtypes.append(t.dtype)
    counts = Counter(layer_type(m) for m in {module_of(n, modules) for n in tensors})
    for key, n in counts.items():
        by_type[key].modules = n
    return dict(sorted(by_type.items())), dict(sorted(by_dtype.items()))
