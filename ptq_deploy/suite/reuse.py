"""Compressed checkpoints reused across experiments and results dirs, by content.

A compress step's key (``plan.compress_key``: the model source, the scheme's content, the group size, the
KV-cache scheme, the calibration) together with the model's fingerprint (the GGUF's sha256, the hub id and
revision, or a local directory's file names, sizes and modification times) names what the step produces.
After a compress step, ``store`` keeps its checkpoint and ``CompressResult`` under
``~/.cache/ptq-deploy/checkpoints/<key>/``; a later compress step with the same key, in any results dir,
``fetch``es them instead of compressing again, and its result says where they came from
(``CompressResult.reused_from``; its times are those of the original compression). Files are hard links
where the filesystem allows, so a reused checkpoint costs no second copy on disk.

``--force compress`` compresses anew (and replaces the kept copy); ``PTQ_DEPLOY_CHECKPOINT_CACHE=off`` turns
reuse off and any other value moves the store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ptq_deploy.compress import CompressResult
from ptq_deploy.models import ModelSource
from ptq_deploy.results import Identity, atomic_write_json, replace_dir, temp_sibling
from ptq_deploy.settings import settings

RESULT = "compress.json"


def store_dir() -> Path | None:
    """Where kept checkpoints live, or None when reuse is off."""
    return settings().checkpoint_cache


def fingerprint(src: ModelSource) -> str:
    """What identifies the model's weights: content hash, hub revision, or a local dir's file listing."""
    if src.gguf_sha256:
        return f"gguf:{src.gguf_sha256}"
    if src.kind == "hub":
        return f"hub:{src.spec}@{src.revision}"
    h = hashlib.sha256()
    root = Path(src.path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"local:{h.hexdigest()}"


def entry(step_key: str, src: ModelSource) -> Path | None:
    root = store_dir()
    if root is None:
        return None
    return root / hashlib.sha256(f"{step_key}|{fingerprint(src)}".encode()).hexdigest()[:24]


def _link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` as hard links (a copy where the filesystem cannot link)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _place(src: Path, out: Path) -> None:
    """``src``'s files at ``out``, atomically (a complete directory or none)."""
    work = temp_sibling(out)
    try:
        _link_tree(src, work)
        replace_dir(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def fetch(step_key: str, src: ModelSource, out: Path) -> CompressResult | None:
    """The kept checkpoint for this key, linked to ``out``, with its result; None when there is none."""
    e = entry(step_key, src)
    if e is None or not (e / RESULT).is_file() or not (e / "checkpoint").is_dir():
        return None
    kept = CompressResult.model_validate_json((e / RESULT).read_text())
    _place(e / "checkpoint", out)
    return kept.model_copy(update={
        "identity": Identity(**{**kept.identity.model_dump(), "checkpoint": str(out.resolve())}),
        "reused_from": kept.identity.checkpoint})


def store(step_key: str, src: ModelSource, ckpt: Path, result: CompressResult) -> None:
    """Keep ``ckpt`` and its result for later compress steps with the same key (best effort: a full disk
    or a read-only store never fails the step that produced the checkpoint)."""
    e = entry(step_key, src)
    if e is None:
        return
    try:
        e.mkdir(parents=True, exist_ok=True)
        _place(ckpt, e / "checkpoint")
        atomic_write_json(e / RESULT, result, force=True)
    except OSError as err:
        print(f"[ptq-deploy] checkpoint not kept for reuse ({e}): {err}")
