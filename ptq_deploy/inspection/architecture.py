"""A checkpoint's module tree: built from ``config.json`` on the meta device, or guessed from tensor names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ptq_deploy.checkpoint import TensorEntry
from ptq_deploy.checkpoint.architecture import Module, module_tree


def meta_modules(path: Path, config: dict[str, Any], trust_remote_code: bool) -> tuple[dict[str, Module], int] | None:
    """Module tree and parameter count of the architecture, built from config.json on the meta device."""
    tree = module_tree(config, path, trust_remote_code)
    return None if tree is None else (tree.modules, tree.param_count)


def modules_from_tensors(tensors: dict[str, TensorEntry]) -> dict[str, Module]:
    """Fallback when transformers cannot build the architecture: Linears recognised by tensor names."""
    mods: dict[str, Module] = {}
    for name, t in tensors.items():
        prefix, _, suffix = name.rpartition(".")
        linear = (suffix in ("weight_packed", "qweight") or (suffix == "weight" and len(t.shape) == 2)) \
            and not re.search(r"(^|\.)(embed\w*|wte|wpe)$", prefix)
        if prefix and prefix not in mods:
            mods[prefix] = Module(name=prefix, classes=["Linear"] if linear else [])
    return mods


def layer_type(module: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", module)


def module_of(tensor: str, modules: dict[str, Module]) -> str:
    prefix = tensor.rsplit(".", 1)[0] if "." in tensor else tensor
    while prefix and prefix not in modules and "." in prefix:
        prefix = prefix.rsplit(".", 1)[0]
    return prefix


def shape_from_tensors(m: Module, t: dict[str, TensorEntry], config: dict[str, Any]) -> None:
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

