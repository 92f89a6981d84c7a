"""Scheme registry: one YAML file per scheme in the top-level ``schemes/`` (adding a scheme = adding a file; the
package reads them through the link ``ptq_deploy/data/schemes``, whose files the wheel build copies).

Each file holds the scheme's metadata and a real llmcompressor recipe under ``recipe:``, or, for the
research methods no library ships (``method: pot | apot``, ``ptq_deploy.compress.fakequant``), their bits and
terms: those are ``quality_only`` (weights on the grid, stored dense; measured for quality, never
deployed). The files are package data, so an installed wheel has the same registry as a checkout.
"""

from __future__ import annotations

import copy
import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.table import Table

from ptq_deploy import DATA_DIR
from ptq_deploy.checkpoint.grid import IGNORE as FAKE_QUANT_IGNORE
from ptq_deploy.checkpoint.grid import FakeQuantSpec, magnitudes
from ptq_deploy.checkpoint.quant import FORMAT_BITS, FORMAT_GROUP, QUANT_MODIFIERS, from_recipe, kernel_kind, modifiers
from ptq_deploy.errors import UsageError
from ptq_deploy.kvcache import methods as kv_methods

SCHEMES_DIR = DATA_DIR / "schemes"
WEIGHT_BITS = {"bf16": 16, "int8": 8, "int4": 4, "int3": 3, "int2": 2, **FORMAT_BITS}
WeightKind = Literal["bf16", "fp8", "fp8-block", "nvfp4", "mxfp4", "mxfp8", "int8", "int4", "int3", "int2", "pot",
                     "apot"]
ActivationKind = Literal["bf16", "fp8", "int8", "nvfp4", "mxfp4", "mxfp8"]

KV_CACHE_SCHEMES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "fp8": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True},
}


class Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    calibration: bool
    weights: WeightKind
    activations: ActivationKind
    group_size: int | None = Field(None, description="weight group (FP8-BLOCK: the block side); NVFP4 / MX: the "
                                                     "format's own, not to be changed")
    hardware_notes: str = ""
    method: Literal["llmcompressor", "pot", "apot"] = "llmcompressor"
    bits: int | None = Field(None, ge=2, le=8, description="pot / apot: bits per weight code, sign included")
    k_terms: int | None = Field(None, ge=1, description="apot: powers of two summed per level")
    quality_only: bool = Field(False, description="stored dense: measured for quality, never deployed or ranked")
    recipe: dict[str, Any] | None = None
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "Scheme":
        fake = self.method != "llmcompressor"
        if not fake:
            if self.weights in ("pot", "apot") or self.bits is not None or self.k_terms is not None:
                raise UsageError(f"{self.name}: weights {self.weights}, bits and k_terms need method: pot | apot")
            return self
        if self.weights != self.method or self.activations != "bf16" or self.recipe is not None:
            raise UsageError(f"{self.name}: method {self.method} takes weights: {self.method}, activations: bf16 "
                             "and no recipe")
        if self.bits is None or self.group_size is None or self.calibration or not self.quality_only:
            raise UsageError(f"{self.name}: method {self.method} needs bits and group_size, calibration: false and "
                             "quality_only: true (its weights are stored dense)")
        if self.method == "pot" and self.k_terms is not None:
            raise UsageError(f"{self.name}: k_terms applies to apot only")
        try:
            magnitudes(self.method, self.bits, self.k_terms or 2)
        except ValueError as e:
            raise UsageError(f"{self.name}: {e}") from None
        return self

    @property
    def weight_bits(self) -> int:
        return WEIGHT_BITS.get(self.weights) or self.bits or 16

    @property
    def kind(self) -> str:
        """Kernel family key (``checkpoint.quant.kernel_kind``; a quality-only scheme runs as dense)."""
        return "dense" if self.quality_only else kernel_kind(self.weights, self.activations)

    @property
    def group_adjustable(self) -> bool:
        """Does ``--group-size`` (a model's ``group_size``) apply? Not to per-channel schemes nor to the formats
        whose group the format fixes (NVFP4 16, MX 32)."""
        return self.group_size is not None and self.weights not in FORMAT_GROUP

    def resolve(self, group_size: int | None = None, kv_cache: str = "none",
                modifier_args: dict[str, dict[str, Any]] | None = None) -> "ResolvedRecipe":
        return resolve_recipe(self, group_size=group_size, kv_cache=kv_cache, modifier_args=modifier_args)

    @property
    def modifier_names(self) -> set[str]:
        return {name for name, _ in modifiers(self.recipe)} if self.recipe else set()


class ResolvedRecipe(BaseModel):
    """A scheme's recipe after user overrides; what is handed to llmcompressor's ``oneshot``."""

    scheme: str
    recipe: dict[str, Any] | None
    group_size: int | None
    kv_cache: str
    needs_calibration: bool
    ignore: list[str]
    fake_quant: FakeQuantSpec | None = None  # pot / apot: done by ptq_deploy.compress.fakequant, not llmcompressor

    def to_yaml(self) -> str:
        if self.fake_quant is not None:
            return yaml.safe_dump({"fake_quant": self.fake_quant.model_dump()}, sort_keys=False)
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
    # baseline first, then by weight bits (high to low), W8A8 before weight-only, quality-only last
    loaded.sort(key=lambda s: (-s.weight_bits, s.activations == "bf16", s.quality_only, s.name))
    return {s.name: s for s in loaded}


def table(runs: dict[str, str] | None = None, where: str = "") -> Table:
    """The registry as the console shows it (``ptq-deploy schemes``); ``runs``: per scheme, whether vLLM runs it
    (and with which kernel) ``where``."""
    t = Table(title="schemes", caption=f"runs: vLLM {where}" if runs else None)
    for c in ("name", "weights", "activations", "group", "calibration", *(["runs"] if runs else []), "description"):
        t.add_column(c)
    for s in registry().values():
        t.add_row(s.name, f"{s.weights}{s.bits or ''}", s.activations, str(s.group_size or "-"),
                  "yes" if s.calibration else "no", *([runs.get(s.name, "?")] if runs else []), s.description)
    return t


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Scheme:
    reg = registry()
    if name in reg:
        return reg[name]
    folded = {k.lower(): v for k, v in reg.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    # a name that extends a scheme's (INT4-W4A16-GPTQ: the GPTQ scheme is INT4-W4A16) first, then look-alikes
    longest = max((k for k in reg if name.lower().startswith(k.lower() + "-")), key=len, default=None)
    close = list(dict.fromkeys(([longest] if longest else []) + difflib.get_close_matches(name, list(reg), n=2, cutoff=0.5)))
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UsageError(f"unknown scheme {name!r}{hint}; Available: {', '.join(reg)}")


def from_recipe_file(path: Path) -> Scheme:
    """A user recipe (``--recipe my.yaml``): a scheme file, or a bare llmcompressor recipe classified by
    the quantization it asks for (``checkpoint.quant.from_recipe``)."""
    if not path.is_file():
        raise UsageError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"invalid recipe YAML {path}: {e}".splitlines()[0]) from None
    if isinstance(data, dict) and "recipe" in data and "name" in data:
        return _load(path)
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} is not a YAML mapping")
    q = from_recipe(data)
    if q.weight_kind not in WEIGHT_BITS or q.activation_kind not in ActivationKind.__args__:
        raise UsageError(f"recipe {path} quantizes to {q.weight_kind} weights / {q.activation_kind} activations, "
                         "which no vLLM kernel family here covers")
    static_acts = q.input_activations is not None and not q.input_activations.dynamic
    calib = static_acts or q.kv_cache is not None or any(
        name in ("GPTQModifier", "AWQModifier", "SmoothQuantModifier") for name, _ in modifiers(data))
    return Scheme(name=f"custom:{path.stem}", description=f"user recipe {path}", calibration=calib,
                  weights=q.weight_kind, activations=q.activation_kind, group_size=q.group_size,
                  recipe=data, source=str(path))


def resolve_recipe(scheme: Scheme, group_size: int | None = None, kv_cache: str = "none",
                   modifier_args: dict[str, dict[str, Any]] | None = None) -> ResolvedRecipe:
    if kv_cache not in KV_CACHE_SCHEMES:
        if kv_cache in kv_methods.REGISTRY:  # a KV method that is chosen at run time, not written into a checkpoint
            how = ("compress without --kv-cache and run vLLM with --kv-cache-dtype fp8" if kv_cache == "fp8-uncalibrated"
                   else f"{kv_methods.QUALITY_ONLY_NOTE}: measure it with `ptq-deploy kv CKPT -m {kv_cache}`")
            raise UsageError(f"--kv-cache {kv_cache} is not written into a checkpoint ({how})")
        raise UsageError(f"unknown --kv-cache {kv_cache!r}; choose from {', '.join(KV_CACHE_SCHEMES)}")
    recipe = copy.deepcopy(scheme.recipe)
    effective_group = scheme.group_size
    ignore: list[str] = []
    if group_size is not None:
        if not is_power_of_two(group_size):
            raise UsageError(f"group size {group_size} is not a positive power of two")
        if scheme.group_size is None:
            raise UsageError(f"scheme {scheme.name} is not group-quantized; --group-size does not apply")
        if not scheme.group_adjustable and group_size != scheme.group_size:
            raise UsageError(f"{scheme.name}'s group is {scheme.group_size} by the {scheme.weights.upper()} format; "
                             "--group-size does not apply")
        effective_group = group_size
    if scheme.method != "llmcompressor":
        if kv_cache != "none":
            raise UsageError(f"--kv-cache {kv_cache} needs an llmcompressor recipe; {scheme.name} has none")
        spec = FakeQuantSpec(method=scheme.method, bits=scheme.bits, group_size=effective_group,
                             k_terms=scheme.k_terms or (2 if scheme.method == "apot" else 1))
        return ResolvedRecipe(scheme=scheme.name, recipe=None, group_size=effective_group, kv_cache=kv_cache,
                              needs_calibration=False, ignore=list(FAKE_QUANT_IGNORE), fake_quant=spec)
    if recipe:
        for name, args in modifiers(recipe):
            args.update((modifier_args or {}).get(name, {}))
            ignore.extend(args.get("ignore", []))
            for grp in (args.get("config_groups") or {}).values():
                if group_size is None:
                    continue
                w, a = grp.get("weights") or {}, grp.get("input_activations") or {}
                if w.get("strategy") == "group":
                    w["group_size"] = group_size
                elif w.get("strategy") == "block":  # FP8-BLOCK: square blocks, activations grouped alike
                    w["block_structure"] = [group_size, group_size]
                    if a.get("strategy") == "group":
                        a["group_size"] = group_size
    kv = KV_CACHE_SCHEMES[kv_cache]
    if kv is not None:
        if recipe is None:
            recipe = {"quant_stage": {"quant_modifiers": {"QuantizationModifier": {}}}}
        quant = [args for name, args in modifiers(recipe) if name in QUANT_MODIFIERS]
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


def is_power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def group_sizes_that_fit(named_linears: dict[str, int], ignore: list[str]) -> str:
    """The usual group sizes that divide every quantized layer's input size, as a phrase for an error."""
    sizes = set(linear_targets(named_linears, ignore).values())
    fits = [g for g in (256, 128, 64, 32, 16) if all(s % g == 0 for s in sizes)]
    return f"group sizes that fit this model: {', '.join(map(str, fits)) or 'none (use a per-channel scheme)'}"


def check_group_size(named_linears: dict[str, int], ignore: list[str], group_size: int | None,
                     option: str = "--group-size") -> None:
    """Stop before calibrating when the group is not a power of two or a quantized layer's input size is not
    a multiple of it. ``option``: how the user set it (the CLI flag, or an experiment file's key)."""
    if not group_size:
        return
    if not is_power_of_two(group_size):
        raise UsageError(f"{option} {group_size} is not a positive power of two; "
                         f"{group_sizes_that_fit(named_linears, ignore)}")
    targets = linear_targets(named_linears, ignore)
    bad = {n: k for n, k in targets.items() if k % group_size}
    if not bad:
        return
    name, k = next(iter(bad.items()))
    raise UsageError(
        f"{option} {group_size} does not divide input size {k} of layer {name} "
        f"({len(bad)} layers affected); {group_sizes_that_fit(named_linears, ignore)}"
    )
