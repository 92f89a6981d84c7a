"""Atomic writes of result files and directories: a failed run never leaves a half output."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.errors import UsageError


def atomic_write_text(path: Path, text: str, force: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode(), force=force)


def atomic_write_bytes(path: Path, data: bytes, force: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, obj: BaseModel, force: bool = False) -> Path:
    return atomic_write_text(path, obj.model_dump_json(indent=2) + "\n", force=force)


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")


def temp_sibling(out: Path) -> Path:
    """A fresh temporary directory next to ``out`` (same filesystem, so rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".ptq-tmp-{out.name}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_dir(out: Path, force: bool = False):
    """Yield a temporary sibling directory; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    check_output_dir(out, force)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the complete directory ``tmp`` (a ``temp_sibling`` of ``out``) at ``out``; an old ``out`` is
    moved aside first and removed only once the new one is in place."""
    if out.exists():
        old = temp_sibling(out)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
