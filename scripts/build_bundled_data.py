"""Rebuild the bundled offline data in ``ptq_deploy/data/`` from a registry package.

Source: Debian package ``r-cran-janeaustenr`` (MIT; the novels are public domain).
Needs ``apt-get download r-cran-janeaustenr``, ``dpkg-deb`` and the ``rdata`` PyPI package.

    python scripts/build_bundled_data.py --deb r-cran-janeaustenr_1.0.0-1_all.deb

Outputs (committed, ~1 MB in total):
- ``calibration/austen_calibration.jsonl``: paragraphs of *Pride and Prejudice* and *Emma*
  (calibration text, never used for evaluation).
- ``eval/persuasion_ppl.jsonl``: held-out *Persuasion* chapters 1-12 split into ~2,000-character
  documents (perplexity task).
- ``eval/persuasion_cloze.jsonl``: last-word cloze questions from *Persuasion* chapters 13-24, four
  choices each (multiple-choice task). Distractors are words from the same book with the same
  length bucket, drawn with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "ptq_deploy" / "data"
RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"


def read_books(deb: Path) -> dict[str, str]:
    import rdata

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        base = Path(tmp) / RDATA
        index = rdata.conversion.convert(rdata.parser.parse_file(str(base) + ".rdx"))
        raw = (base.parent / "Rdata.rdb").read_bytes()
        books = {}
        for name, (off, length) in index["variables"].items():
            blob = zlib.decompress(raw[off + 4 : off + length])
            lines = rdata.conversion.convert(rdata.parser.parse_data(blob))
            books[str(name)] = "\n".join(str(x) for x in lines)
    return books


def paragraphs(text: str) -> list[str]:
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(p) > 200 and not p.startswith("Chapter")]


def chapters(text: str) -> list[str]:
    return [c for c in re.split(r"\nChapter \d+\n", text)[1:]]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(DATA)}: {len(rows)} rows, {path.stat().st_size} bytes")


def build(deb: Path) -> None:
    books = read_books(deb)
    rng = random.Random(1234)

    calib = [
        {"text": p, "source": book}
        for book in ("prideprejudice", "emma")
        for p in paragraphs(books[book])
    ]
    write_jsonl(DATA / "calibration" / "austen_calibration.jsonl", calib[:1200])

    chaps = chapters(books["persuasion"])
    held_ppl = " ".join(re.sub(r"\s+", " ", c).strip() for c in chaps[:12])
    docs, cur = [], ""
    for sentence in re.split(r"(?<=[.!?]) ", held_ppl):
        cur = f"{cur} {sentence}".strip()
        if len(cur) >= 2000:
            docs.append({"text": cur})
            cur = ""
    write_jsonl(DATA / "eval" / "persuasion_ppl.jsonl", docs[:24])

    cloze_text = "\n\n".join(chaps[12:])
    paras = paragraphs(cloze_text)
    vocab = sorted({w for w in re.findall(r"\b[a-z]{4,}\b", cloze_text)})
    items = []
    for p in paras:
        m = re.match(r"^(.*\b)([A-Za-z]{4,})([.!?;,\"']*)$", p)
        if not m or len(m.group(1)) < 150:
            continue
        context, answer = m.group(1)[-600:].lstrip(), m.group(2)
        bucket = [w for w in vocab if abs(len(w) - len(answer)) <= 1 and w != answer.lower()]
        distractors = rng.sample(bucket, 3)
        choices = distractors + [answer]
        rng.shuffle(choices)
        items.append({"context": context.rstrip(), "choices": choices, "label": choices.index(answer)})
    rng.shuffle(items)
    write_jsonl(DATA / "eval" / "persuasion_cloze.jsonl", items[:200])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deb", type=Path, required=True, help="path to r-cran-janeaustenr .deb")
    build(ap.parse_args().deb)
