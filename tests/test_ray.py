"""``run --executor ray`` on a local Ray cluster of 2 CPUs: cells at once, the same results as a local
run (the suite's serial run, ``serial_run``), a worker killed mid-step, and a missing Ray."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ptq_deploy.report import build_report
from ptq_deploy.suite import layout
from ptq_deploy.suite.events import SuiteListener
from ptq_deploy.suite.execute import run
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import RunOptions, plan

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")

def _exp(tiny_suite: dict) -> Experiment:
    """The suite's experiment without perf, on BF16 and its calibration-free scheme: the same checkpoints and
    scores wherever they are made."""
    return Experiment(**{**tiny_suite, "name": "tiny-ray", "schemes": tiny_suite["schemes"][:2],
                         "steps": ["compress", "inspect", "eval"]})


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs) for the module; its workers inherit this process's environment."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_and_local(tiny_suite, serial_run, tmp_path_factory, cluster):
    exp = _exp(tiny_suite)
    root = tmp_path_factory.mktemp("ray-results") / "ray"
    return exp, root, run(exp, RunOptions(results_dir=root, executor="ray")), serial_run


def _span(rec: layout.StepRecord) -> tuple[float, float]:
    start = dt.datetime.fromisoformat(rec.started_at).timestamp()
    return start, start + rec.wall_time_s


def test_cells_run_at_once_and_report_as_a_local_run(ray_and_local):
    exp, root, by_ray, local = ray_and_local
    CELLS = exp.schemes
    assert not by_ray.failed, [(s.cell, s.step, s.reason) for s in by_ray.failed]
    recs = {(r.cell, r.step): r for r in layout.records(root)}
    assert set(recs) == {(c, s) for c in CELLS for s in exp.steps}
    assert {s.worker for s in by_ray.steps} != {None}  # where each step ran is known
    (a0, a1), (b0, b1) = (_span(recs[(c, "compress")]) for c in CELLS)
    assert min(a1, b1) - max(a0, b0) > 1.0, "the two cells' compress steps did not overlap"
    for r in layout.records(root):  # nothing names the workers' scratch dirs
        assert str(root) in r.identity.checkpoint
    assert not [p for p in root.rglob("*") if p.is_file() and b"ptq-deploy-ray-" in p.read_bytes()]
    for cell in CELLS:
        ck = [layout.checkpoint_dir(d, "tiny", cell) for d in (root, local)]
        assert {p.name for p in ck[0].iterdir()} == {p.name for p in ck[1].iterdir()}
        assert (ck[0] / "model.safetensors").read_bytes() == (ck[1] / "model.safetensors").read_bytes()
    rows = [{r.cell: r for r in build_report(d).rows()} for d in (root, local)]
    assert rows[0].keys() == set(CELLS) <= rows[1].keys()
    for cell in CELLS:
        a, b = rows[0][cell], rows[1][cell]
        assert (a.status.get("eval"), a.weights_gb, a.bits_per_weight, a.eval_backend) == \
               (b.status.get("eval"), b.weights_gb, b.bits_per_weight, b.eval_backend)
        assert a.ppl is not None and a.ppl == pytest.approx(b.ppl, rel=1e-4)
        assert a.tasks.keys() == b.tasks.keys()
        for t in a.tasks:
            assert a.tasks[t].value == pytest.approx(b.tasks[t].value, rel=1e-4)


class _KillWhenStarts(SuiteListener):
    """Kills the Ray worker running ``cell``'s ``step`` a moment after it starts."""

    def __init__(self, cell: str, step: str):
        self.cell, self.step, self.killed = cell, step, None

    def on_step_start(self, ps, elapsed_s):
        if (ps.cell, ps.step) == (self.cell, self.step):
            time.sleep(2)  # inside the step: loading the engine
            self.killed = int(ps.worker.rsplit(" ", 1)[1])
            os.kill(self.killed, signal.SIGKILL)


def test_a_killed_worker_fails_its_step_and_a_rerun_resumes(ray_and_local, tmp_path):
    exp, root, _, _ = ray_and_local
    quant = exp.schemes[1]
    res = tmp_path / "res"
    shutil.copytree(root, res)
    layout.step_file(res, "tiny", quant, "eval").unlink()  # that step to do again, nothing else (one engine load)
    bf16 = layout.step_file(res, "tiny", "BF16", "eval").stat().st_mtime_ns
    listener = _KillWhenStarts(quant, "eval")
    first = run(exp, RunOptions(results_dir=res, executor="ray"), listener)
    assert listener.killed
    states = {(s.cell, s.step): (s.state, s.reason) for s in first.steps}
    assert [k for k, (st, _) in states.items() if st in ("ok", "failed", "pending")] == [(quant, "eval")], states
    state, reason = states[(quant, "eval")]
    assert state == "failed" and reason.startswith("worker died: "), reason
    rec = layout.StepRecord.read(layout.step_file(res, "tiny", quant, "eval"))
    assert rec.status == "failed" and rec.reason == reason
    assert [(s.cell, s.step) for s in plan(exp, RunOptions(results_dir=res)) if s.state == "pending"] == \
           [(quant, "eval")]
    again = run(exp, RunOptions(results_dir=res, executor="ray"))
    assert not again.failed and [(s.cell, s.step) for s in again.steps if s.state == "ok"] == [(quant, "eval")]
    assert layout.StepRecord.read(layout.step_file(res, "tiny", quant, "eval")).status == "ok"
    assert layout.step_file(res, "tiny", "BF16", "eval").stat().st_mtime_ns == bf16  # not redone


def test_without_ray_one_line_and_a_nonzero_exit(tiny_model, tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(Experiment(name="tiny-ray", schemes=["BF16"], models=[{"name": "tiny", "source": str(tiny_model)}])
                 .model_dump_json())  # JSON is YAML; nothing runs
    code = ("import sys; sys.modules['ray'] = None; from ptq_deploy.cli import main; "
            f"sys.argv = ['ptq-deploy', 'run', {str(f)!r}, '-o', {str(tmp_path / 'res')!r}, '--executor', 'ray']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "pip install 'ray[default]'" in p.stderr, p.stderr
    assert not (tmp_path / "res" / "steps").exists()
