"""Scheme registry: one YAML file per scheme in ``schemes/`` (adding a scheme = adding a file).

Each file holds the scheme's metadata and a real llmcompressor recipe under ``recipe:``.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from ptq_deploy.errors import UsageError

SCHEMES_DIR = Path(__file__).resolve().parent.parent / "schemes"

KV_CACHE_SCHEMES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "fp8": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True},
}
QUANT_MODIFIERS = ("GPTQModifier", "QuantizationModifier")


class Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    calibration: bool
    weights: Literal["bf16", "fp8", "int8", "int4"]
    activations: Literal["bf16", "fp8", "int8"]
    group_size: int | None = None
    hardware_notes: str = ""
    recipe: dict[str, Any] | None = None
    source: str = ""

    @property
    def weight_bits(self) -> int:
        return {"bf16": 16, "fp8": 8, "int8": 8, "int4": 4}[self.weights]

    @property
    def kind(self) -> str:
        """Kernel family key: dense, fp8-w8a8, int8-w8a8, wna16."""
        if self.weights == "bf16":
            return "dense"
        if self.activations == "bf16":
            return "wna16"
        return f"{self.weights}-w8a8"

    def resolve(self, group_size: int | None = None, kv_cache: str = "none") -> "ResolvedRecipe":
        return resolve_recipe(self, group_size=group_size, kv_cache=kv_cache)


class ResolvedRecipe(BaseModel):
    """A scheme's recipe after user overrides; what is handed to llmcompressor's ``oneshot``."""

    scheme: str
    recipe: dict[str, Any] | None
    group_size: int | None
    kv_cache: str
    needs_calibration: bool
    ignore: list[str]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.recipe, sort_keys=False) if self.recipe else ""


def _load(path: Path) -> Scheme:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"invalid scheme YAML {path}: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UsageError(f"invalid scheme YAML {path}: expected a mapping")
    try:
        return Scheme(**data, source=str(path))
    except Exception as e:  # pydantic ValidationError: first line is enough
        raise UsageError(f"invalid scheme file {path}: {str(e).splitlines()[0]}") from None


@lru_cache(maxsize=1)
def registry() -> dict[str, Scheme]:
    loaded = [_load(path) for path in SCHEMES_DIR.glob("*.yaml")]
    # baseline first, then by weight bits (high to low), W8A8 before weight-only
    loaded.sort(key=lambda s: (-s.weight_bits, s.activations == "bf16", s.name))
    return {s.name: s for s in loaded}


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Scheme:
    reg = registry()
    if name in reg:
        return reg[name]
    folded = {k.lower(): v for k, v in reg.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UsageError(f"unknown scheme {name!r}; known: {', '.join(reg)}")


def from_recipe_file(path: Path) -> Scheme:
    """A user recipe (``--recipe my.yaml``): a scheme file, or a bare llmcompressor recipe."""
    if not path.is_file():
        raise UsageError(f"recipe file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "recipe" in data and "name" in data:
        return _load(path)
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} is not a YAML mapping")
    text = yaml.safe_dump(data)
    bits = 4 if "num_bits: 4" in text else 8
    weights = "fp8" if "type: float" in text else f"int{bits}"
    acts = "bf16" if "input_activations" not in text else ("fp8" if weights == "fp8" else "int8")
    calib = any(k in text for k in ("GPTQModifier", "AWQModifier", "SmoothQuantModifier", "dynamic: false\n  strategy: tensor"))
    m = re.search(r"group_size: (\d+)", text)
    return Scheme(name=f"custom:{path.stem}", description=f"user recipe {path}", calibration=calib,
                  weights=weights, activations=acts, group_size=int(m.group(1)) if m else None,
                  recipe=data, source=str(path))


def _modifiers(recipe: dict[str, Any]):
    """Yield (name, args) for every modifier in a stage/group-nested recipe."""
    for stage in recipe.values():
        if not isinstance(stage, dict):
            continue
        for group in stage.values():
            if isinstance(group, dict):
                for mod_name, args in group.items():
                    if mod_name.endswith("Modifier") and isinstance(args, dict):
                        yield mod_name, args


def resolve_recipe(scheme: Scheme, group_size: int | None = None, kv_cache: str = "none") -> ResolvedRecipe:
    if kv_cache not in KV_CACHE_SCHEMES:
        raise UsageError(f"unknown --kv-cache {kv_cache!r}; choose from {', '.join(KV_CACHE_SCHEMES)}")
    recipe = copy.deepcopy(scheme.recipe)
    effective_group = scheme.group_size
    ignore: list[str] = []
    if group_size is not None:
        if group_size <= 0 or group_size & (group_size - 1):
            raise UsageError(f"--group-size must be a positive power of two, not {group_size}")
        if scheme.group_size is None:
            raise UsageError(f"scheme {scheme.name} is not group-quantized; --group-size does not apply")
        effective_group = group_size
    if recipe:
        for _, args in _modifiers(recipe):
            ignore.extend(args.get("ignore", []))
            for grp in (args.get("config_groups") or {}).values():
                w = grp.get("weights") or {}
                if w.get("strategy") == "group" and group_size is not None:
                    w["group_size"] = group_size
    kv = KV_CACHE_SCHEMES[kv_cache]
    if kv is not None:
        if recipe is None:
            recipe = {"quant_stage": {"quant_modifiers": {"QuantizationModifier": {}}}}
        quant = [args for name, args in _modifiers(recipe) if name in QUANT_MODIFIERS]
        quant[-1]["kv_cache_scheme"] = dict(kv)
    return ResolvedRecipe(
        scheme=scheme.name,
        recipe=recipe,
        group_size=effective_group,
        kv_cache=kv_cache,
        needs_calibration=scheme.calibration or kv is not None,
        ignore=sorted(set(ignore)),
    )


def linear_targets(named_linears: dict[str, int], ignore: list[str]) -> dict[str, int]:
    """Filter ``{module name: in_features}`` by an llmcompressor ignore list (names or ``re:``)."""
    out = {}
    for name, k in named_linears.items():
        skip = False
        for pat in ignore:
            if pat.startswith("re:"):
                skip = re.match(pat[3:], name) is not None
            else:
                skip = name == pat or name.endswith("." + pat)
            if skip:
                break
        if not skip:
            out[name] = k
    return out


def check_group_size(named_linears: dict[str, int], ignore: list[str], group_size: int | None) -> None:
    """Stop before calibrating when a quantized layer's input size is not a multiple of the group."""
    if not group_size:
        return
    targets = linear_targets(named_linears, ignore)
    bad = {n: k for n, k in targets.items() if k % group_size}
    if not bad:
        return
    name, k = next(iter(bad.items()))
    sizes = sorted(set(targets.values()))
    fits = [g for g in (256, 128, 64, 32, 16) if all(s % g == 0 for s in sizes)]
    raise UsageError(
        f"group size {group_size} does not divide input size {k} of layer {name} "
        f"({len(bad)} layers affected); group sizes that fit this model: "
        f"{', '.join(map(str, fits)) or 'none (use a per-channel scheme)'} (--group-size)"
    )
