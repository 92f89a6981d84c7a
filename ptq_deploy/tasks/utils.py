"""Dataset loaders for the bundled offline tasks (referenced from the YAMLs with ``!function``).

lm-eval resolves ``!function utils.X`` relative to the YAML's directory and calls ``X(**metadata,
**dataset_kwargs)``; the data paths are resolved here from the installed package, so the tasks work
from any working directory and any checkout location, without network access.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"  # lm-eval loads this file by path
EVAL_DATA = DATA / "eval"


def _load(name: str, folder: Path = EVAL_DATA):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(folder / name)})


def load_cloze(**_kwargs):
    return _load("persuasion_cloze.jsonl")


def load_ppl(**_kwargs):
    return _load("persuasion_ppl.jsonl")


def load_passkey(**_kwargs):
    return _load("passkey.jsonl", DATA / "longctx")
