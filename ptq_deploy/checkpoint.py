"""Reading a checkpoint's quantization config (no weights loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptq_deploy.errors import UsageError
from ptq_deploy.schemes import Scheme


def read_config(path: Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise UsageError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise UsageError(f"corrupt config.json in {path}: {e}") from None


def quantization_config(path: Path) -> dict[str, Any] | None:
    return read_config(path).get("quantization_config")


def scheme_of(path: Path) -> Scheme:
    """Describe a checkpoint's scheme from its config (compressed-tensors, GPTQ/AWQ, or dense)."""
    qc = quantization_config(path)
    if not qc:
        return Scheme(name="dense", description="unquantized", calibration=False, weights="bf16",
                      activations="bf16")
    method = qc.get("quant_method")
    if method in ("gptq", "awq"):
        bits = int(qc.get("bits", 4))
        return Scheme(name=f"{method.upper()}-W{bits}A16", description=f"{method} hub format",
                      calibration=True, weights=f"int{bits}" if bits in (4, 8) else "int4",
                      activations="bf16", group_size=qc.get("group_size"))
    if method == "fp8":
        return Scheme(name="FP8", description="fp8 hub format", calibration=False, weights="fp8",
                      activations="fp8")
    groups = qc.get("config_groups") or {}
    if method != "compressed-tensors" or not groups:
        if qc.get("kv_cache_scheme") and not groups:
            return Scheme(name="dense+kv", description="kv-cache only", calibration=True, weights="bf16",
                          activations="bf16")
        return Scheme(name=str(method), description="unknown quantization", calibration=False,
                      weights="bf16", activations="bf16")
    g = next(iter(groups.values()))
    w = g.get("weights") or {}
    a = g.get("input_activations")
    bits, typ = int(w.get("num_bits", 16)), w.get("type", "int")
    weights = "fp8" if typ == "float" and bits == 8 else f"int{bits}"
    if weights not in ("fp8", "int8", "int4"):
        weights = "int4" if bits < 8 else "int8"
    acts = "bf16"
    if a:
        acts = "fp8" if a.get("type") == "float" else "int8"
    name = f"{'FP8' if weights == 'fp8' else weights.upper()}-W{bits}A{8 if a else 16}"
    return Scheme(name=name, description=qc.get("format", ""), calibration=False, weights=weights,
                  activations=acts, group_size=w.get("group_size"))
