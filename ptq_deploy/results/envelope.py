"""The header every result shares: schema version, ``kind``, identity, timing and provenance.

``ResultEnvelope`` is the base of CompressResult, InspectReport, PerfResult, EvalResult and the
suite's StepRecord. A result owns its read/write (``write``/``read``); files written before the
envelope existed (schema version 1) are upgraded on read by each kind's ``_upgrade_v1``.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from ptq_deploy.errors import UsageError
from ptq_deploy.provenance import Provenance
from ptq_deploy.results.io import atomic_write_json
from ptq_deploy.timeutil import file_stamp

SCHEMA_VERSION = 2


def safe_name(s: str) -> str:
    """A model or scheme name made safe for a file name (``+`` kept: ``FP8+kv-fp8``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-") or "model"


class Identity(BaseModel):
    """What a result is about. ``checkpoint``: the directory measured (or a hub id)."""

    model: str
    scheme: str
    kv_cache: str = "none"
    checkpoint: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} [{self.scheme}{'' if self.kv_cache == 'none' else ' kv ' + self.kv_cache}]"


class ResultEnvelope(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str
    identity: Identity
    started_at: str
    wall_time_s: float = 0.0
    provenance: Provenance | None = None
    path: str | None = Field(None, exclude=True)  # the file it was read from or written to (not stored)

    UPGRADES_V1: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) < SCHEMA_VERSION:
            data = cls._upgrade_v1(dict(data))
            data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def _upgrade_v1(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def file_name(self) -> str:
        """``<model>_<scheme>_<time>.json``: where ``write_new`` puts this result in a directory."""
        when = _dt.datetime.fromisoformat(self.started_at) if self.started_at else None
        return f"{safe_name(self.identity.model)}_{safe_name(self.identity.scheme)}_{file_stamp(when)}.json"

    def write(self, path: Path, force: bool = False) -> Path:
        return atomic_write_json(Path(path), self, force=force)

    def write_new(self, out_dir: Path) -> Path:
        """Write into ``out_dir`` under a fresh name (``-2``, ``-3``... when the time-stamped one exists); ``path``
        is then that file."""
        base = Path(out_dir) / self.file_name()
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.stem}-{i}.json")
        self.path = str(self.write(path))
        return Path(self.path)

    @classmethod
    def read(cls, path: Path):
        res = read_json(path, cls.model_validate_json, f"ptq-deploy {cls.__name__}")
        res.path = str(path)
        return res


def read_json(path: Path, validate: Callable[[str], Any], what: str):
    """``validate(text of path)``, every failure one clear line (unreadable file, not ``what``)."""
    try:
        return validate(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except (ValidationError, ValueError) as e:
        raise UsageError(f"{path} is not a {what}: {str(e).splitlines()[0]}") from None


def v1_identity(data: dict[str, Any], model: str | None, scheme: str | None, checkpoint: str | None,
                kv_cache: str | None = None) -> dict[str, Any]:
    """Move a version-1 result's scattered identity fields into ``identity``."""
    data["identity"] = {"model": model or "?", "scheme": scheme or "?", "kv_cache": kv_cache or "none",
                        "checkpoint": checkpoint or ""}
    data.setdefault("started_at", (data.get("provenance") or {}).get("created_at") or "")
    return data
