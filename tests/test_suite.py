"""The suite on the tiny model: plan, run, resume without redoing work, failures recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SUITE_PERF

from ptq_deploy.suite import layout
from ptq_deploy.suite.execute import run
from ptq_deploy.suite.experiment import Experiment, load
from ptq_deploy.suite.plan import RunOptions, plan

pytestmark = pytest.mark.integration



def _exp(tiny_model, **kw):
    d = {"name": "tiny", "models": [{"name": "tiny", "source": str(tiny_model), "engine": {"max_model_len": 256}}],
         "schemes": ["BF16", "FP8-W8A8", "INT8-W8A16-RTN"], "compress": {"num_samples": 4, "max_seq_len": 32},
         "perf": SUITE_PERF, "eval": {"tasks": ["austen_cloze"], "limit": 4}}
    d.update(kw)
    return Experiment(**d)


def test_plan_marks_what_cannot_run_here(tiny_model, tmp_path, runs_here):
    exp = _exp(tiny_model)
    steps = plan(exp, RunOptions(results_dir=tmp_path))
    by = {(s.cell, s.step): s for s in steps}
    for scheme in exp.schemes:  # as the probe measured it on this machine
        sup, perf = runs_here(scheme), by[(scheme, "perf")]
        slow = sup.runnable and sup.slowdown > exp.max_slowdown  # an emulated kernel: measured, not run
        assert perf.state == ("pending" if sup.runnable and not slow else "not_runnable")
        assert sup.runnable or (sup.reason in perf.reason and sup.source in perf.reason)
        assert not slow or f"took {sup.slowdown:.0f}x the dense model's time per token" in perf.reason
        # what vLLM cannot run is scored in vLLM on its dequantized weights (an activation-quantized scheme's row
        # is then judged apart: test_float_formats)
        assert by[(scheme, "eval")].backend == (None if slow else "vllm" if sup.runnable else "vllm-dequantized")
    assert ("BF16", "eval-hf") not in by and by[("BF16", "eval")].backend == "vllm"  # one baseline, one backend
    w8 = runs_here("INT8-W8A16-RTN").runnable
    hf = {(s.cell, s.step): s for s in plan(_exp(tiny_model, eval={"tasks": ["austen_cloze"], "fallback": "hf"}),
                                            RunOptions(results_dir=tmp_path))}
    assert hf[("INT8-W8A16-RTN", "eval")].backend == ("vllm" if w8 else "hf")
    assert (("BF16", "eval-hf") in hf) == (not w8)  # an hf-scored cell needs the baseline scored by hf too
    none = plan(_exp(tiny_model, eval={"tasks": ["austen_cloze"], "fallback": None}), RunOptions(results_dir=tmp_path))
    assert {s.state for s in none if s.cell == "INT8-W8A16-RTN" and s.step == "eval"} == (
        {"pending"} if w8 else {"not_runnable"})
    assert all(s.state == "pending" for s in steps if s.step == "compress")
    assert [s.cell for s in steps][0] == "BF16"
    only = plan(_exp(tiny_model), RunOptions(results_dir=tmp_path, include_schemes=["FP8-W8A8"]))
    assert {s.cell for s in only} == {"BF16", "FP8-W8A8"}  # the baseline comes along for recovery


def test_step_keys_do_not_depend_on_the_checkout_path(tiny_model, tmp_path, monkeypatch):
    from ptq_deploy.compress import schemes

    before = {(s.cell, s.step): s.key for s in plan(_exp(tiny_model), RunOptions(results_dir=tmp_path))}
    get = schemes.get
    monkeypatch.setattr(schemes, "get", lambda name: get(name).model_copy(
        update={"source": f"/elsewhere/schemes/{name}.yaml"}))
    after = {(s.cell, s.step): s.key for s in plan(_exp(tiny_model), RunOptions(results_dir=tmp_path))}
    assert after == before
    changed = get("FP8-W8A8").model_copy(update={"group_size": 32})  # content still counts
    monkeypatch.setattr(schemes, "get", lambda name: changed if name == "FP8-W8A8" else get(name))
    third = {(s.cell, s.step): s.key for s in plan(_exp(tiny_model), RunOptions(results_dir=tmp_path))}
    assert third[("FP8-W8A8", "compress")] != before[("FP8-W8A8", "compress")]
    assert third[("BF16", "compress")] == before[("BF16", "compress")]


@pytest.fixture(scope="module")
def suite_run(serial_run, tiny_suite):
    return Experiment(**tiny_suite), serial_run


def test_suite_runs_every_step_and_records_it(suite_run, runs_here):
    exp, root = suite_run
    recs = {(r.cell, r.step): r for r in layout.records(root)}
    w8a16 = runs_here("INT8-W8A16-RTN").runnable
    assert recs[("INT8-W8A16-RTN", "perf")].status == ("ok" if w8a16 else "not_runnable")
    assert {(c, s) for c in exp.schemes for s in ("compress", "inspect", "perf", "eval")} <= set(recs)
    assert [(k, r.reason) for k, r in recs.items() if r.status == "failed"] == []
    quant = exp.schemes[1]
    perf = json.loads((root / recs[(quant, "perf")].result).read_text())
    assert perf["kind"] == "perf" and perf["vllm_quantization"] == "compressed-tensors"
    ev = json.loads((root / recs[("INT8-W8A16-RTN", "eval")].result).read_text())
    assert ev["settings"]["backend"] == "vllm" and ev["identity"]["scheme"] == "INT8-W8A16-RTN"
    assert (ev["dequantized_from"] or "").endswith("INT8-W8A16-RTN") == (not w8a16)  # scored on its dense copy
    assert (layout.log_file(root, "tiny", quant, "compress")).stat().st_size > 0
    assert yaml.safe_load((root / "experiment.yaml").read_text())["name"] == "tiny"


def test_rerun_skips_finished_steps(suite_run):
    exp, root = suite_run
    before = {p: p.stat().st_mtime_ns for p in (root / "steps").rglob("*.json")}
    again = run(exp, RunOptions(results_dir=root))
    assert {s.state for s in again.steps} <= {"done", "not_runnable"}
    after = {p: p.stat().st_mtime_ns for p in (root / "steps").rglob("*.json")}
    assert {p: m for p, m in after.items() if "not_runnable" not in p.read_text()} == \
           {p: m for p, m in before.items() if "not_runnable" not in p.read_text()}
    forced = plan(exp, RunOptions(results_dir=root, force=["inspect"]))
    assert {s.step for s in forced if s.state == "pending"} == {"inspect"}


def test_failures_are_recorded_and_the_suite_goes_on(tiny_model, tmp_path, cli):
    # INT8-W8A8 calibrates (SmoothQuant + GPTQ) from a set that is not there: its compress step fails in the
    # compress worker; BF16 and FP8-W8A8 (dynamic, no calibration) go on
    exp = {"name": "bad", "models": [{"name": "tiny", "source": str(tiny_model)}],
           "schemes": ["BF16", "INT8-W8A8", "FP8-W8A8"], "steps": ["compress", "inspect"],
           "compress": {"num_samples": 4, "max_seq_len": 32, "dataset": str(tmp_path / "no-such-set.jsonl")}}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(exp))
    p = cli("run", str(f), "-o", str(tmp_path / "res"))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "tiny/INT8-W8A8/compress: failed:" in p.stdout and "no-such-set.jsonl" in p.stdout
    recs = {(r.cell, r.step): r.status for r in layout.records(tmp_path / "res")}
    assert recs == {("BF16", "compress"): "ok", ("BF16", "inspect"): "ok", ("INT8-W8A8", "compress"): "failed",
                    ("FP8-W8A8", "compress"): "ok", ("FP8-W8A8", "inspect"): "ok"}


def test_a_group_size_that_does_not_fit_stops_the_plan(tiny_model, tmp_path, cli):
    exp = {"name": "bad", "models": [{"name": "tiny", "source": str(tiny_model)}], "schemes": ["BF16", "INT4-W4A16-RTN"]}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(exp))
    p = cli("run", str(f), "-o", str(tmp_path / "res"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "INT4-W4A16-RTN: group size 128 does not divide input size 192" in p.stderr
    assert not (tmp_path / "res" / "steps").exists()  # refused before any step ran


def test_killed_halfway_then_rerun_finishes_without_redoing(tiny_model, tmp_path):
    exp = {"name": "kill", "models": [{"name": "tiny", "source": str(tiny_model)}],
           "schemes": ["BF16", "FP8-W8A8"], "steps": ["compress", "inspect"],
           "compress": {"num_samples": 4, "max_seq_len": 32}}
    f = tmp_path / "kill.yaml"
    f.write_text(yaml.safe_dump(exp))
    root = tmp_path / "res"
    cmd = [sys.executable, "-m", "ptq_deploy.cli", "run", str(f), "-o", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = layout.step_file(root, "tiny", "BF16", "compress")
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "first step never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # as hard as it gets: no cleanup handlers run
    proc.wait()
    mtime = first.stat().st_mtime_ns
    done_before = {r.step + r.cell for r in layout.records(root)}
    assert len(done_before) < 4
    summary = run(Experiment(**exp), RunOptions(results_dir=root))
    assert not summary.failed
    assert first.stat().st_mtime_ns == mtime  # not redone
    assert {s.state for s in summary.steps if s.step + s.cell in done_before} == {"done"}
    assert len(layout.records(root)) == 4
    assert (layout.checkpoint_dir(root, "tiny", "FP8-W8A8") / "config.json").exists()


def test_a_second_experiment_reuses_identical_compressions(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PTQ_DEPLOY_CHECKPOINT_CACHE", str(tmp_path / "store"))
    exp = Experiment(name="reuse", models=[{"name": "tiny", "source": str(tiny_model)}],
                     schemes=["BF16", "INT8-W8A16-RTN"], steps=["compress", "inspect"],
                     compress={"num_samples": 4, "max_seq_len": 32})

    def compress_results(root):
        return {c: json.loads(layout.result_file(root, "tiny", c, "compress").read_text()) for c in exp.schemes}

    first = run(exp, RunOptions(results_dir=tmp_path / "a"))
    again = run(exp, RunOptions(results_dir=tmp_path / "b"))
    assert not first.failed and not again.failed
    a, b = compress_results(tmp_path / "a"), compress_results(tmp_path / "b")
    for cell in exp.schemes:
        ca, cb = (layout.checkpoint_dir(r, "tiny", cell) for r in (tmp_path / "a", tmp_path / "b"))
        assert a[cell]["reused_from"] is None and b[cell]["reused_from"] == str(ca.resolve())
        assert b[cell]["identity"]["checkpoint"] == str(cb.resolve())
        assert b[cell]["wall_time_s"] == a[cell]["wall_time_s"]  # the original compression's time, said so
        weights = sorted(p.name for p in ca.glob("*.safetensors"))
        assert weights and all((ca / w).read_bytes() == (cb / w).read_bytes() for w in weights)
    one = Experiment(**{**exp.model_dump(), "schemes": ["BF16"]})  # --force compress: anew (one cell shows it)
    run(one, RunOptions(results_dir=tmp_path / "d", force=["compress"]))
    assert json.loads(layout.result_file(tmp_path / "d", "tiny", "BF16", "compress").read_text())["reused_from"] is None


def test_a_cells_engine_settings_reach_vllm(suite_run, tiny_model, tmp_path):
    """The model's engine settings (here a bf16 KV cache) reach vLLM: its cache holds 2-byte entries, so
    the same KV-cache space holds (compute bytes / 2) times the tokens of the default cache."""
    _, root = suite_run
    exp = _exp(tiny_model, schemes=["BF16"], steps=["compress", "perf"],
               models=[{"name": "tiny", "source": str(tiny_model),
                        "engine": {"max_model_len": 256, "kv_cache_dtype": "bfloat16"}}])
    summary = run(exp, RunOptions(results_dir=tmp_path))
    assert not summary.failed, [(s.step, s.reason) for s in summary.failed]
    bf16_kv, default = (json.loads((r / "results/tiny/BF16/perf.json").read_text()) for r in (tmp_path, root))
    assert bf16_kv["engine"]["kv_cache_dtype"] == "bfloat16"  # as vLLM's cache config reports it
    assert default["engine"]["kv_cache_dtype"] == "auto"
    compute_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[default["engine"]["dtype"]]
    ratio = bf16_kv["memory"]["kv_cache_tokens"] / default["memory"]["kv_cache_tokens"]
    assert ratio == pytest.approx(compute_bytes / 2, rel=0.05)


def test_the_shipped_experiment_loads_and_plans():
    from ptq_deploy.suite.experiment import load

    exp = load("experiments/smollm2-135m.yaml")  # the README's path, found in the package
    assert exp == load("smollm2-135m") and exp.models[0].engine.max_model_len == 1024
    steps = plan(exp, RunOptions(results_dir=Path("/nonexistent"), dry_run=True))
    assert {s.cell for s in steps} == set(exp.schemes) and steps[0].cell == exp.baseline
    assert all(s.state in ("pending", "not_runnable") for s in steps)


def test_serving_schemes_name_the_experiments_own_schemes(tmp_path):
    from ptq_deploy.errors import UsageError

    spec = dict(name="s", models=[{"name": "m", "source": str(tmp_path)}], schemes=["BF16", "INT8-W8A8"])
    assert Experiment(**spec, perf={"serving_schemes": ["BF16"]}).perf.serving_schemes == ["BF16"]
    with pytest.raises(UsageError, match=r"perf.serving_schemes: INT4-W4A16 is not one of the experiment's schemes"):
        Experiment(**spec, perf={"serving_schemes": ["INT4-W4A16"]})


def test_the_shipped_hf_experiment_scores_every_cell_with_the_hf_backend():
    """``smollm2-135m-hf``: the GPU check where vLLM is absent is a shipped experiment, not a script."""
    from ptq_deploy.suite.experiment import load

    exp, ready = load("smollm2-135m-hf"), load("smollm2-135m")
    assert exp.schemes == ready.schemes and exp.eval.backend == "hf"
    steps = plan(exp, RunOptions(results_dir=Path("/nonexistent"), dry_run=True))
    assert {s.step for s in steps} == {"compress", "inspect", "eval"}
    assert {s.backend for s in steps if s.step == "eval"} == {"hf"}
    assert {s.cell for s in steps} == set(exp.schemes) and steps[0].cell == exp.baseline


def test_a_schemes_own_calibration_reaches_its_compress_step_only(tiny_model, tmp_path):
    """``compress: schemes: {NAME: ...}`` changes that scheme's calibration (and compress key), no other's."""
    from ptq_deploy import checkpoint
    from ptq_deploy.errors import UsageError

    spec = dict(name="calib", models=[{"name": "tiny", "source": str(tiny_model)}], schemes=["BF16", "INT8-W8A8"],
                steps=["compress"])
    plain = Experiment(**spec, compress={"num_samples": 4, "max_seq_len": 32})
    own = Experiment(**spec, compress={"num_samples": 4, "max_seq_len": 32, "schemes": {"INT8-W8A8": {"num_samples": 6}}})

    def keys(exp):
        return {s.cell: s.key for s in plan(exp, RunOptions(results_dir=tmp_path, dry_run=True)) if s.step == "compress"}

    assert keys(own)["BF16"] == keys(plain)["BF16"] and keys(own)["INT8-W8A8"] != keys(plain)["INT8-W8A8"]
    summary = run(own, RunOptions(results_dir=tmp_path))
    assert not summary.failed, [(s.step, s.reason) for s in summary.failed]
    calib = checkpoint.read(layout.checkpoint_dir(tmp_path, "tiny", "INT8-W8A8")).metadata.calibration
    assert (calib.num_samples, calib.max_seq_len) == (6, 32)  # the texts the compress worker calibrated on
    with pytest.raises(UsageError, match="compress.schemes: INT4-W4A16 is not one of the experiment's schemes"):
        Experiment(**spec, compress={"schemes": {"INT4-W4A16": {"num_samples": 8}}})


def test_a_second_run_on_a_held_results_dir_stops_at_once_naming_the_holder(tmp_path):
    from ptq_deploy.errors import UsageError

    with layout.hold(tmp_path / "r"):
        with pytest.raises(UsageError, match=rf"{tmp_path / 'r'} is in use by another `ptq-deploy run` "
                                             rf"\(pid {os.getpid()} on .*, since .*\)"):
            with layout.hold(tmp_path / "r"):
                pass
    with layout.hold(tmp_path / "r"):  # released: the next run takes it
        pass


def test_an_experiment_can_score_every_cell_with_the_hf_backend(tiny_model, tmp_path):
    """What a host without vLLM runs (a GPU check): every eval step on lm-eval's HF backend, the baseline too,
    and no second baseline eval."""
    base = {"name": "hf", "models": [{"name": "tiny", "source": str(tiny_model)}],
            "schemes": ["BF16", "FP8-W8A8", "INT8-W8A16"], "steps": ["compress", "inspect", "eval"]}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({**base, "eval": {"backend": "hf"}}))
    hf = [s for s in plan(load(f), RunOptions(results_dir=tmp_path / "r", dry_run=True)) if s.step.startswith("eval")]
    f.write_text(yaml.safe_dump(base))
    vllm = [s for s in plan(load(f), RunOptions(results_dir=tmp_path / "r", dry_run=True)) if s.step.startswith("eval")]
    assert [(s.cell, s.step, s.backend) for s in hf] == [(c, "eval", "hf") for c in base["schemes"]]
    assert {s.cell: s.key for s in hf}.keys() == {s.cell for s in vllm if s.step == "eval"}
    assert not {s.key for s in hf} & {s.key for s in vllm}  # a result scored by the other backend is not reused
