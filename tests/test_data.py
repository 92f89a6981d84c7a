import json
from collections import Counter

import pytest

from ptq_deploy import data
from ptq_deploy.errors import UsageError


def test_bundled_sets_exist_and_are_small():
    files = [*(data.DATA_DIR / "calibration").glob("*.jsonl"), *(data.DATA_DIR / "eval").glob("*.jsonl")]
    assert len(files) == 3 and sum(f.stat().st_size for f in files) < 3 * 2**20
    everything = [f for f in data.DATA_DIR.rglob("*") if f.is_file()]  # the long-context texts included
    assert sum(f.stat().st_size for f in everything) < 8 * 2**20
    cloze = [json.loads(l) for l in (data.DATA_DIR / "eval" / "persuasion_cloze.jsonl").read_text().splitlines()]
    assert len(cloze) == 200 and all(len(c["choices"]) == 4 and 0 <= c["label"] < 4 for c in cloze)
    assert all(len(set(c["choices"])) == 4 for c in cloze)  # four distinct answers
    labels = Counter(c["label"] for c in cloze)
    assert min(labels[k] for k in range(4)) >= 25  # the answer position carries no signal


def test_calibration_is_deterministic_per_seed():
    a, ia = data.calibration_texts("austen", 16, 256, seed=0)
    b, ib = data.calibration_texts("austen", 16, 256, seed=0)
    c, ic = data.calibration_texts("austen", 16, 256, seed=1)
    assert a == b and ia.sha256 == ib.sha256 and ia.sha256 != ic.sha256
    assert ia.num_samples == 16 and all(len(t) > 200 for t in a)


def test_local_files_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                                      + json.dumps({"instruction": "add", "output": "4"}) + "\n")
    texts, info = data.calibration_texts(str(tmp_path), 10, 64, 0)
    assert sorted(texts) == sorted(["first paragraph", "second paragraph", "hi", "add\n4"])
    assert info.num_samples == 4 and not info.chat_template


def test_chat_rows_use_the_tokenizer_template(tmp_path):
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize):
            return "<|user|>" + msgs[0]["content"]

    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    texts, info = data.calibration_texts(str(f), 1, 64, 0, tokenizer=Tok())
    assert texts == ["<|user|>hello"] and info.chat_template


def test_bad_calibration_inputs(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        data.calibration_texts(str(tmp_path / "nope.jsonl"), 1, 8, 0)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UsageError, match="unsupported"):
        data.calibration_texts(str(tmp_path / "x.csv"), 1, 8, 0)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(UsageError, match="'text'"):
        data.calibration_texts(str(tmp_path / "bad.jsonl"), 1, 8, 0)
