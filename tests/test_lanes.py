"""``run --lanes 2`` on the tiny model: cells' untimed steps overlap, perf runs alone afterwards, and the results
are the serial run's (``serial_run``: the same experiment run serially in-process). The laned run goes through the
CLI: the lanes' spawn machinery stays out of the test process."""

import json
from datetime import datetime

import pytest
import yaml

from ptq_deploy.suite import layout

pytestmark = pytest.mark.integration


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


def test_lanes_overlap_untimed_work_and_time_perf_alone(tiny_suite, serial_run, tmp_path, cli):
    exp = tmp_path / "lanes.yaml"
    cells = tiny_suite["schemes"][:2]  # two cells, two lanes; calibration-free: the same checkpoints in either run
    exp.write_text(yaml.safe_dump({**tiny_suite, "schemes": cells}))
    laned = cli("run", str(exp), "-o", str(tmp_path / "lanes"), "--lanes", "2")
    assert laned.returncode == 0, laned.stdout[-2000:] + laned.stderr[-2000:]
    assert _states(tmp_path / "lanes") == {k: v for k, v in _states(serial_run).items() if k[0] in cells}
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
        a, b = _scores(serial_run, cell), _scores(tmp_path / "lanes", cell)
        ppl = [s["austen_ppl"]["metrics"]["word_perplexity"]["value"] for s in (a, b)]
        assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)


def test_more_lanes_than_cpus_is_one_line(tiny_model, tmp_path, cli):
    import os

    exp = tmp_path / "lanes.yaml"
    exp.write_text(yaml.safe_dump({"name": "lanes", "models": [{"name": "tiny", "source": str(tiny_model)}],
                                   "schemes": ["BF16", "INT8-W8A16-RTN"]}))
    p = cli("run", str(exp), "-o", str(tmp_path / "r"), "--lanes", str(len(os.sched_getaffinity(0)) + 1))
    assert p.returncode == 2 and "--lanes" in p.stdout + p.stderr
    assert (p.stdout + p.stderr).strip().count("\n") == 0 and not (tmp_path / "r" / "steps").exists()
