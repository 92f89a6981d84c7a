"""``run --lanes 2`` on the tiny model: cells' untimed steps overlap, perf runs alone afterwards, and
the results are the serial run's."""

import json
from datetime import datetime

import pytest

from ptq_deploy.errors import UsageError
from ptq_deploy.suite import layout
from ptq_deploy.suite.execute import run
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import RunOptions

pytestmark = pytest.mark.integration

PERF = {"num_prompts": 4, "input_len": 16, "output_len": 8, "iterations": 1, "warmup": 0, "serving": False,
        "latency_prompts": 2}


def _exp(tiny_model) -> Experiment:
    return Experiment(name="lanes", models=[{"name": "tiny", "source": str(tiny_model), "engine": {"max_model_len": 256}}],
                      schemes=["BF16", "FP8-W8A8", "INT8-W8A16-RTN"], compress={"num_samples": 4, "max_seq_len": 32},
                      perf=PERF, eval={"tasks": ["austen_ppl"], "limit": 4})


def _spans(root):
    out = {}
    for r in layout.records(root):
        start = datetime.fromisoformat(r.started_at).timestamp()
        out[(r.cell, r.step)] = (start, start + r.wall_time_s, r)
    return out


def _scores(root, cell):
    rec = next(r for r in layout.records(root) if (r.cell, r.step) == (cell, "eval"))
    return json.loads((root / rec.result).read_text())["tasks"]


def test_lanes_overlap_untimed_work_and_time_perf_alone(tiny_model, tmp_path, probe):
    exp = _exp(tiny_model)
    serial = run(exp, RunOptions(results_dir=tmp_path / "serial"))
    laned = run(exp, RunOptions(results_dir=tmp_path / "lanes", lanes=2))
    assert not laned.failed, [(s.cell, s.step, s.reason) for s in laned.failed]
    assert {(s.cell, s.step): s.state for s in laned.steps} == {(s.cell, s.step): s.state for s in serial.steps}
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
    for cell in ("BF16", "FP8-W8A8", "INT8-W8A16-RTN"):  # same checkpoints, same scores, one core or two
        a, b = _scores(tmp_path / "serial", cell), _scores(tmp_path / "lanes", cell)
        ppl = [s["austen_ppl"]["metrics"]["word_perplexity"]["value"] for s in (a, b)]
        assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)


def test_more_lanes_than_cpus_is_one_line(tiny_model, tmp_path):
    import os

    with pytest.raises(UsageError, match="--lanes"):
        run(_exp(tiny_model), RunOptions(results_dir=tmp_path, lanes=len(os.sched_getaffinity(0)) + 1))
    assert not (tmp_path / "steps").exists()
