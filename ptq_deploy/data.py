"""Bundled offline data and calibration-set loading.

Built-in calibration sets:
- ``austen`` (default, offline): paragraphs of *Pride and Prejudice* and *Emma* bundled in
  ``ptq_deploy/data/calibration`` (public domain; built by ``scripts/build_bundled_data.py``).
- hub sets, loaded with ``datasets`` where the hub is reachable: ``ultrachat_200k``, ``wikitext``,
  ``open_platypus``.
A local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file or a directory of them also works.
Rows with ``messages`` (chat) are rendered with the model's chat template.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ptq_deploy import DATA_DIR
from ptq_deploy.errors import UsageError

BUNDLED = {
    "austen": DATA_DIR / "calibration" / "austen_calibration.jsonl",
}
HUB = {
    "ultrachat_200k": {"path": "HuggingFaceH4/ultrachat_200k", "split": "train_sft"},
    "wikitext": {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "split": "train"},
    "open_platypus": {"path": "garage-bAInd/Open-Platypus", "split": "train"},
}
DEFAULT_DATASET = "austen"
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class CalibrationInfo(BaseModel):
    dataset: str
    num_samples: int
    max_seq_len: int
    seed: int
    sha256: str
    chat_template: bool
    # AutoRound's samples, joined with EOS and cut into equal chunks (compress.worker.pack_equal_length):
    # (chunks, tokens each); None where the samples were calibrated on as they are
    packed: tuple[int, int] | None = None


def _row_text(row: dict[str, Any], tokenizer) -> tuple[str, bool]:
    if "messages" in row and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(row["messages"], tokenize=False), True
    if "messages" in row:
        return "\n".join(m.get("content", "") for m in row["messages"]), False
    if "instruction" in row:
        msgs = [{"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": row.get("output", "")}]
        return _row_text({"messages": msgs}, tokenizer)
    if "text" in row:
        return str(row["text"]), False
    raise UsageError(f"calibration rows need a 'text', 'messages' or 'instruction' field; got {sorted(row)}")


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        paras = [p.strip() for p in path.read_text(errors="replace").split("\n\n")]
        return [{"text": p} for p in paras if p]
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data.get("data", [])
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise UsageError(f"unsupported calibration file type {path.suffix} (use {', '.join(FILE_SUFFIXES)})")


def _rows(spec: str) -> list[dict[str, Any]]:
    if spec in BUNDLED:
        return _read_file(BUNDLED[spec])
    p = Path(spec).expanduser()
    if p.is_file():
        return _read_file(p)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise UsageError(f"no {', '.join(FILE_SUFFIXES)} files in {p}")
        return [r for f in files for r in _read_file(f)]
    if spec in HUB:
        import datasets

        h = HUB[spec]
        try:
            ds = datasets.load_dataset(h["path"], h.get("name"), split=h["split"], streaming=True)
            return [dict(r) for _, r in zip(range(4096), ds)]
        except Exception as e:
            raise UsageError(f"cannot fetch calibration set {spec} ({h['path']}): "
                             f"{str(e).splitlines()[0]}; use the offline default '{DEFAULT_DATASET}'") from None
    raise UsageError(f"calibration dataset not found: {spec} (built-in: "
                     f"{', '.join([*BUNDLED, *HUB])}; or a file/directory)")


def calibration_texts(spec: str, num_samples: int, max_seq_len: int, seed: int,
                      tokenizer=None) -> tuple[list[str], CalibrationInfo]:
    rows = _rows(spec)
    if not rows:
        raise UsageError(f"calibration set {spec} is empty")
    random.Random(seed).shuffle(rows)
    texts, chat = [], False
    for row in rows[:num_samples]:
        t, used = _row_text(row, tokenizer)
        texts.append(t)
        chat = chat or used
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    return texts, CalibrationInfo(dataset=spec, num_samples=len(texts), max_seq_len=max_seq_len,
                                  seed=seed, sha256=digest, chat_template=chat)
