"""Long-context samples, offline and deterministic: passkey retrieval, whole chapters, with provenance.

Text is bundled in ``ptq_deploy/data/longctx/`` (built by ``scripts/build_kv_data.py`` from Debian's
``r-cran-janeaustenr``; public-domain novels held out from calibration and the other eval sets):
*Mansfield Park* chapters 1-5 as passkey filler, whole *Sense and Sensibility* chapters of 2k-4k
tokens for long-document perplexity and generation prompts. Token counts come from the model's own
tokenizer; every random choice comes from a seeded ``random.Random``.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from ptq_deploy import DATA_DIR
from ptq_deploy.errors import UsageError

DATA = DATA_DIR / "longctx"
SOURCE = "Debian r-cran-janeaustenr 1.0.0-1 (MIT; text public domain), see scripts/build_kv_data.py"
HEAD = ("There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about it.\n\n")
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"
DEPTHS = [0.1, 0.25, 0.5, 0.75, 0.9]


class PasskeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lengths: list[int] = Field(default_factory=lambda: [1024, 2048, 4096], description="context lengths, tokens")
    depths: list[float] = Field(default_factory=lambda: list(DEPTHS), description="needle depth, fraction of the filler")
    samples: int = Field(1, ge=1, description="samples per depth x length")
    seed: int = 0


class PasskeySample(BaseModel):
    """One item: ``context`` (the cached part, with the key inside) then ``question``; the answer is ``key``."""

    id: str
    length: int
    depth: float
    key: str
    context: str
    question: str = QUESTION


class Document(BaseModel):
    id: str
    book: str
    chapter: int
    text: str
    sha256: str
    source: str


def _jsonl(name: str) -> list[dict]:
    path = DATA / name
    if not path.is_file():
        raise UsageError(f"bundled long-context data missing: {path} (rebuild with scripts/build_kv_data.py)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def filler_text() -> str:
    return "\n\n".join(r["text"] for r in _jsonl("filler.jsonl"))


def chapters(n: int | None = None) -> list[Document]:
    """Whole chapters (2k-4k tokens with the embedded model's tokenizer): the ``n`` shortest (all when
    ``n`` is None), in book order."""
    rows = _jsonl("chapters.jsonl")
    if n is not None:
        keep = {id(r) for r in sorted(rows, key=lambda r: len(r["text"]))[:n]}
        rows = [r for r in rows if id(r) in keep]
    return [Document(id=f"{r['book']} ch. {r['chapter']}", **{k: r[k] for k in ("book", "chapter", "text", "sha256",
                                                                                 "source")})
            for r in rows]


def passkey_samples(tokenizer, spec: PasskeySpec) -> list[PasskeySample]:
    """Items whose context + question is ``length`` tokens (model tokenizer), key at ``depth`` of the filler.

    Each item takes its filler from a random offset of the bundled text and a random 5-digit key.
    """
    fill = tokenizer(filler_text(), add_special_tokens=False)["input_ids"]
    rng = random.Random(spec.seed)
    out = []
    for length in spec.lengths:
        for depth in spec.depths:
            for i in range(spec.samples):
                key = str(rng.randint(10000, 99999))
                needle = NEEDLE.format(key=key)
                fixed = len(tokenizer(HEAD + needle + QUESTION, add_special_tokens=False)["input_ids"])
                n = length - fixed
                if n <= 0 or n > len(fill):
                    raise UsageError(f"passkey length {length} does not fit: {fixed} fixed tokens, "
                                     f"{len(fill)} filler tokens bundled")
                off = rng.randint(0, len(fill) - n)
                cut = int(n * depth)
                before = tokenizer.decode(fill[off:off + cut])
                after = tokenizer.decode(fill[off + cut:off + n])
                out.append(PasskeySample(id=f"len{length}-d{int(depth * 100)}-{i}", length=length, depth=depth,
                                         key=key, context=HEAD + before + needle + after))
    return out


def provenance(tokenizer_name: str, spec: PasskeySpec, docs: list[Document]) -> dict:
    """What the samples were built from: source, text hashes, tokenizer, seed."""
    return {"source": SOURCE, "tokenizer": tokenizer_name, "seed": spec.seed,
            "filler_sha256": hashlib.sha256(filler_text().encode()).hexdigest(),
            "documents": {d.id: d.sha256 for d in docs}}
