"""A model's module tree from its config alone, built by transformers on the meta device and kept on disk.

Building the tree imports transformers' model classes: seconds in every process that asks (compress's plan,
``run``'s group-size checks, ``inspect``), though the tree depends only on the config and the transformers
release. So a tree is kept under ``<home>/architectures`` by a digest of both and read back by later processes:
a command that only plans or refuses then never imports them. A config with remote code is never kept (its
code can change under the same config).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ptq_deploy.results.io import atomic_write_json
from ptq_deploy.settings import settings


class Module(BaseModel):
    name: str
    classes: list[str]  # MRO class names, for compressed-tensors class targets ("Linear")
    in_features: int | None = None
    out_features: int | None = None
    tied_to: str | None = None


class ModuleTree(BaseModel):
    transformers: str  # the release that built it
    modules: dict[str, Module]
    param_count: int

    def linear_input_sizes(self) -> dict[str, int]:
        """``{module name: in_features}`` of every nn.Linear."""
        return {n: m.in_features for n, m in self.modules.items() if "Linear" in m.classes and m.in_features}


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The config without what does not change the module tree (a checkpoint's quantization)."""
    return {k: v for k, v in config.items() if k != "quantization_config"}


def cache_path(config: dict[str, Any], transformers: str) -> Path:
    digest = hashlib.sha256(json.dumps([_architecture(config), transformers], sort_keys=True).encode()).hexdigest()
    return settings().home / "architectures" / f"{digest[:24]}.json"


def module_tree(config: dict[str, Any], path: Path | None = None, trust_remote_code: bool = False) -> ModuleTree | None:
    """The tree of ``config`` (a config.json's contents; ``path`` its directory, needed for remote code), or
    None where transformers is absent or cannot build it."""
    try:
        release = pkg_metadata.version("transformers")
    except pkg_metadata.PackageNotFoundError:
        return None
    kept = None if trust_remote_code else cache_path(config, release)
    if kept is not None and kept.is_file():
        try:
            return ModuleTree.model_validate_json(kept.read_text())
        except (OSError, ValidationError):
            pass  # unreadable: build it again
    tree = _build(config, path, trust_remote_code, release)
    if tree is not None and kept is not None:
        try:
            atomic_write_json(kept, tree, force=True)
        except OSError:
            pass  # a read-only home: the next process builds it again
    return tree


def _build(config: dict[str, Any], path: Path | None, trust_remote_code: bool, release: str) -> ModuleTree | None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if trust_remote_code and path is not None:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=True)
            if hasattr(cfg, "quantization_config"):
                delattr(cfg, "quantization_config")
        else:
            cfg = AutoConfig.for_model(**_architecture(config))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    except Exception:
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    owner = {id(p): n for n, p in model.named_parameters()}  # first name wins: the stored one when tied
    mods: dict[str, Module] = {}
    for name, m in model.named_modules():
        if not name:
            continue
        mod = Module(name=name, classes=[c.__name__ for c in type(m).__mro__ if issubclass(c, torch.nn.Module)])
        if isinstance(m, torch.nn.Linear):
            mod.in_features, mod.out_features = m.in_features, m.out_features
            stored = owner.get(id(m.weight))
            if stored and stored != f"{name}.weight":
                mod.tied_to = stored.rsplit(".", 1)[0]
        mods[name] = mod
    return ModuleTree(transformers=release, modules=mods, param_count=sum(p.numel() for p in model.parameters()))
