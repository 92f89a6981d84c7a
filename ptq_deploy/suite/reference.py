"""The experiment-file reference, generated from the schema so it cannot drift from it:
``python -m ptq_deploy.suite.reference > docs/experiment-file.md`` (a test compares the two)."""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from ptq_deploy.suite.experiment import Experiment

HEADER = """# Experiment file reference

Generated from the schema (`ptq_deploy/suite/experiment.py` and the settings it nests) by
`python -m ptq_deploy.suite.reference`; do not edit by hand. Keys are YAML paths: `models[].engine.dtype` is the
`dtype` key of the `engine` section of each entry of `models`. A key left out takes its default; a key the
schema does not know stops `ptq-deploy run` before any step, with the closest known key.
"""


def _type(ann: Any) -> str:
    text = str(ann) if not isinstance(ann, type) else ann.__name__
    text = re.sub(r"\b(?:typing|pathlib|ptq_deploy(?:\.\w+)*)\.", "", text).replace("NoneType", "None")
    return text.replace("<class '", "").replace("'>", "")


def _models_in(ann: Any) -> list[tuple[str, type[BaseModel]]]:
    """``(suffix, model)`` for a nested section (``""``), a list of them (``[]``) or a dict of them (``.NAME``)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [("", ann)]
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    if origin is list and args:
        return [("[]" + s, m) for s, m in _models_in(args[0])]
    if origin is dict and len(args) == 2:
        return [(".NAME" + s, m) for s, m in _models_in(args[1])]
    return []


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        nested = _models_in(field.annotation)
        out.append((key, _type(field.annotation), _default(field), " ".join((field.description or "").split())))
        for suffix, sub in nested:
            out += rows(sub, f"{key}{suffix}.")
    return out


def markdown() -> str:
    lines = [HEADER, "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += ["| " + " | ".join([f"`{k}`", *(cell.replace("|", r"\|") for cell in rest)]) + " |"
              for k, *rest in rows(Experiment)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
