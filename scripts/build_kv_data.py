"""Rebuild the bundled long-context text in ``ptq_deploy/data/longctx/`` from a registry package.

Source: Debian package ``r-cran-janeaustenr`` (MIT; the novels are public domain), the same package
``build_bundled_data.py`` reads. Books held out from calibration (*Pride and Prejudice*, *Emma*) and
from the existing eval sets (*Persuasion*):

- ``chapters.jsonl``: the first 12 chapters of *Sense and Sensibility* whose length with the embedded
  model's tokenizer is 2,048-4,096 tokens, whole (long-document perplexity and generation prompts);
- ``filler.jsonl``: *Mansfield Park* chapters 1-5 (passkey filler);
- ``passkey.jsonl``: the passkey items of the lm-eval task ``passkey`` for the embedded model's tokenizer
  (``ptq_deploy.kvcache.longctx.passkey_samples``: lengths 1k/2k/4k, depths 10-90 %, seed 0, one each).

Needs ``apt-get download r-cran-janeaustenr``, ``dpkg-deb``, the ``rdata`` PyPI package and the runtime
environment (transformers, for the tokenizer):

    PYTHONPATH=. python scripts/build_kv_data.py --deb r-cran-janeaustenr_1.0.0-1_all.deb
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
from pathlib import Path

from ptq_deploy.kvcache import longctx
from ptq_deploy.models import resolve

SOURCE = "Debian r-cran-janeaustenr 1.0.0-1 (MIT; text public domain)"
CHAPTER = re.compile(r"\n\s*CHAPTER [0-9IVXL]+\s*\n")


def clean(text: str) -> str:
    """Paragraphs kept (blank line between), line breaks inside a paragraph joined."""
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p and p != "THE END")


def rows(book: str, text: str, source: str = SOURCE) -> list[dict]:
    return [{"book": book, "chapter": i, "text": c, "sha256": hashlib.sha256(c.encode()).hexdigest(),
             "source": source} for i, c in enumerate((clean(p) for p in CHAPTER.split(text)[1:]), start=1)]


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
    print(f"{path}: {len(items)} rows, {path.stat().st_size} bytes")


def read_books(deb: Path) -> dict[str, str]:
    """The novels, read by the sibling script ``build_bundled_data.py`` (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_bundled_data", Path(__file__).with_name("build_bundled_data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.read_books(deb)


def build(deb: Path) -> None:
    from transformers import AutoTokenizer  # heavy

    tok = AutoTokenizer.from_pretrained(resolve("default").path)
    books = read_books(deb)
    chapters = []
    for r in rows("Sense and Sensibility", books["sensesensibility"]):
        n = len(tok(r["text"], add_special_tokens=False)["input_ids"])
        if 2048 <= n <= 4096:
            chapters.append({**r, "tokens_smollm2": n})
    write_jsonl(longctx.DATA / "chapters.jsonl", chapters[:12])
    write_jsonl(longctx.DATA / "filler.jsonl", rows("Mansfield Park", books["mansfieldpark"])[:5])
    items = longctx.passkey_samples(tok, longctx.PasskeySpec(lengths=[1024, 2048, 4096]))
    write_jsonl(longctx.DATA / "passkey.jsonl", [s.model_dump() for s in items])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deb", type=Path, required=True, help="path to r-cran-janeaustenr .deb")
    build(ap.parse_args().deb)
