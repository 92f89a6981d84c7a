"""``run --lanes 2`` on the tiny model: cells' untimed steps overlap, perf runs alone afterwards, and
the results are the serial run's. Both runs go through the CLI: the lanes' spawn machinery and the
in-process engines stay out of the test process."""

import json
from datetime import datetime

import pytest
import yaml

from ptq_deploy.suite import layout

pytestmark = pytest.mark.integration

PERF = {"num_prompts": 4, "input_len": 16, "output_len": 8, "iterations": 1, "warmup": 0, "serving": False,
        "latency_prompts": 2}


def _exp(tiny_model, tmp_path, quant: str = "FP8-W8A8"):
    f = tmp_path / "lanes.yaml"
    f.write_text(yaml.safe_dump({
        "name": "lanes", "models": [{"name": "tiny", "source": str(tiny_model), "group_size": 64,
                                     "engine": {"max_model_len": 256}}],
        "schemes": list(dict.fromkeys(["BF16", quant, "INT8-W8A16-RTN"])),
        "compress": {"num_samples": 4, "max_seq_len": 32},
        "perf": PERF, "eval": {"tasks": ["austen_ppl"], "limit": 4}}))
    return str(f)


def _states(root):
    return {(r.cell, r.step): r.status for r in layout.records(root)}


def _spans(root):
    out = {}
    for r in layout.records(root):
        start = datetime.fromisoformat(r.started_at).timestamp()
        out[(r.cell, r.step)] = (start, start + r.wall_time_s, r)
    return out


def _scores(root, cell):
    rec = next(r for r in layout.records(root) if (r.cell, r.step) == (cell, "eval"))
    return json.loads((root / rec.result).read_text())["tasks"]


def test_lanes_overlap_untimed_work_and_time_perf_alone(tiny_model, tmp_path, quick_quant, cli):
    exp = _exp(tiny_model, tmp_path, quick_quant[0])  # calibration-free: the same checkpoints in either run
    serial = cli("run", exp, "-o", str(tmp_path / "serial"))
    laned = cli("run", exp, "-o", str(tmp_path / "lanes"), "--lanes", "2")
    assert serial.returncode == 0 and laned.returncode == 0, laned.stdout[-2000:] + laned.stderr[-2000:]
    assert _states(tmp_path / "lanes") == _states(tmp_path / "serial")
    assert set(_states(tmp_path / "lanes").values()) <= {"ok", "not_runnable"}
    spans = _spans(tmp_path / "lanes")
    untimed = {k: v for k, v in spans.items() if k[1] != "perf" and v[2].status == "ok"}
    perf = {k: v for k, v in spans.items() if k[1] == "perf" and v[2].status == "ok"}
    assert perf and min(v[0] for v in perf.values()) >= max(v[1] for v in untimed.values())  # perf ran alone
    cells = {}
    for (cell, _), (a, b, _) in untimed.items():
        lo, hi = cells.get(cell, (a, b))
        cells[cell] = (min(lo, a), max(hi, b))
    windows = sorted(cells.values())
    assert any(windows[i + 1][0] < windows[i][1] for i in range(len(windows) - 1))  # two cells at once
    for cell in {c for c, _ in _states(tmp_path / "lanes")}:  # same checkpoints, same scores, one core or two
        a, b = _scores(tmp_path / "serial", cell), _scores(tmp_path / "lanes", cell)
        ppl = [s["austen_ppl"]["metrics"]["word_perplexity"]["value"] for s in (a, b)]
        assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)


def test_more_lanes_than_cpus_is_one_line(tiny_model, tmp_path, cli):
    import os

    p = cli("run", _exp(tiny_model, tmp_path), "-o", str(tmp_path / "r"), "--lanes",
            str(len(os.sched_getaffinity(0)) + 1))
    assert p.returncode == 2 and "--lanes" in p.stdout + p.stderr
    assert (p.stdout + p.stderr).strip().count("\n") == 0 and not (tmp_path / "r" / "steps").exists()
