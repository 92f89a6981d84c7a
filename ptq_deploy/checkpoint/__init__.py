"""The one reader of a checkpoint: its files, config, quantization, ptq-deploy metadata and names.

``read(path) -> Checkpoint`` parses everything cheap once (no tensor data is read); every other
part of the project asks the ``Checkpoint`` instead of reading ``config.json`` or
``ptq_deploy.json`` itself. ``Checkpoint.model_name`` / ``scheme_name`` are the only place a
checkpoint's labels are derived.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ptq_deploy.checkpoint import metadata as _meta
from ptq_deploy.checkpoint.files import (DTYPE_BYTES, SafetensorsFile, TensorEntry, read_safetensors_header,
                                         tensors, weight_files)
from ptq_deploy.checkpoint.metadata import METADATA_FILE, RECIPE_FILE, CheckpointMetadata
from ptq_deploy.checkpoint.quant import QuantArgs, Quantization, from_config, from_recipe
from ptq_deploy.errors import UsageError
from ptq_deploy.models import DEFAULT_MODEL, EMBEDDED, GGUF_SOURCE_FILE, ModelSource
from ptq_deploy.results import Identity


def read_config(path: Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise UsageError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise UsageError(f"corrupt config.json in {path}: {e}") from None


def _gguf_name(gguf_file: str) -> str:
    return DEFAULT_MODEL if Path(gguf_file).name == EMBEDDED["file"] else Path(gguf_file).stem


def model_name_of_source(src: ModelSource) -> str:
    """A model source's name: the embedded model's short name, a GGUF's stem, a directory's or hub id's name."""
    if src.kind == "embedded":
        return DEFAULT_MODEL
    if src.gguf_file:
        return _gguf_name(src.gguf_file)
    if src.kind == "local" and (Path(src.path) / GGUF_SOURCE_FILE).is_file():
        return _converted_name(Path(src.path))
    return Path(src.spec).name


def _converted_name(path: Path) -> str:
    """A GGUF converted by ``models.gguf_to_hf`` is named after its GGUF file."""
    try:
        return _gguf_name(json.loads((path / GGUF_SOURCE_FILE).read_text())["gguf_file"])
    except (OSError, ValueError, KeyError):
        return path.name


class Checkpoint(BaseModel):
    path: str
    config: dict[str, Any]
    quantization: Quantization
    metadata: CheckpointMetadata | None = None
    metadata_problem: str | None = None

    @property
    def model_name(self) -> str:
        """The source model's name (a compressed checkpoint's source, per its ``ptq_deploy.json``)."""
        if self.metadata is not None:
            return model_name_of_source(self.metadata.source)
        p = Path(self.path)
        return _converted_name(p) if (p / GGUF_SOURCE_FILE).is_file() else p.name

    @property
    def scheme_name(self) -> str:
        """The registry scheme that made it, else what its config carries (``BF16`` for a dense model)."""
        return self.metadata.scheme if self.metadata is not None else self.quantization.name

    @property
    def kv_cache(self) -> str:
        if self.metadata is not None:
            return self.metadata.kv_cache
        return self.quantization.kv_cache_dtype or "none"

    @property
    def max_position(self) -> int | None:
        cfg = self.config.get("text_config", self.config)
        n = cfg.get("max_position_embeddings")
        return int(n) if n else None

    @cached_property
    def tensors(self) -> dict[str, TensorEntry]:
        return tensors(Path(self.path))

    def identity(self) -> Identity:
        return Identity(model=self.model_name, scheme=self.scheme_name, kv_cache=self.kv_cache, checkpoint=self.path)


def read(path: Path | str) -> Checkpoint:
    """Everything cheap about a checkpoint directory; one clear error when it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"checkpoint not found: {path}")
    if not p.is_dir():
        raise UsageError(f"{path} is not a checkpoint directory")
    config = read_config(p)
    meta, problem = _meta.read(p)
    return Checkpoint(path=str(p.resolve()), config=config, quantization=from_config(config), metadata=meta,
                      metadata_problem=problem)


__all__ = ["Checkpoint", "CheckpointMetadata", "DTYPE_BYTES", "METADATA_FILE", "QuantArgs", "Quantization",
           "RECIPE_FILE", "SafetensorsFile", "TensorEntry", "from_config", "from_recipe", "model_name_of_source", "read", "read_config",
           "read_safetensors_header", "tensors", "weight_files"]
