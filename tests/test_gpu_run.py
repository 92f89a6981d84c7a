"""The lent-GPU job (``scripts/gpu_run.py``, docs/gpu.md), where it can be checked without a GPU: its budget
(a step that no longer fits is skipped, one that outruns it is interrupted like Ctrl-C and recorded), and vLLM's
benchmark commands built from a real perf record."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "tests" / "data" / "results-regimes" / "results" / "smollm2-135m" / "BF16" / "perf.json"


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_is_cut_off_at_the_budget_and_one_that_no_longer_fits_is_skipped(gpu_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_run, "RESERVE_S", 0.0)
    monkeypatch.setattr(gpu_run, "MIN_STEP_S", 1.0)
    s = gpu_run.Session(tmp_path / "out", budget_s=3.0, settings={}, copy=tmp_path / "copy.json")
    sleeper = [sys.executable, "-c", "import signal, sys, time\n"
               "signal.signal(signal.SIGINT, lambda *_: (print('interrupted', flush=True), sys.exit(130)))\n"
               "print('started', flush=True); time.sleep(60)"]
    t = time.monotonic()
    entry = s.step("sleeper", sleeper)
    assert time.monotonic() - t < 3.0 + gpu_run.INTERRUPT_GRACE_S
    assert entry["status"] == "cut off at the budget" and entry["rc"] == 130
    assert "interrupted" in entry["tail"]
    late = s.step("late", [sys.executable, "-c", "print('never')"])
    assert late["status"] == "skipped" and "budget" in late["reason"]
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert [x["status"] for x in record["steps"]] == ["cut off at the budget", "skipped"]
    assert json.loads((tmp_path / "copy.json").read_text()) == record
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "started" in log and "interrupted" in log and "never" not in log


def test_vllm_benchmarks_get_the_perf_steps_settings_and_workload(gpu_run, tmp_path):
    perf = json.loads(PERF.read_text())
    eng, wl = perf["engine"], perf["workload"]
    cmds = gpu_run.bench_commands(perf, ["vllm"], tmp_path, "BF16_eager", eager=True, warmups=False)

    def flag(cmd, name):
        return cmd[cmd.index(name) + 1]

    for kind, cmd in cmds.items():
        assert cmd[:3] == ["vllm", "bench", kind]
        assert flag(cmd, "--model") == eng["model"] and flag(cmd, "--dtype") == eng["dtype"]
        assert int(flag(cmd, "--max-model-len")) == eng["settings"]["max_model_len"]
        assert "--enforce-eager" in cmd and "--disable-log-stats" in cmd and "--num-warmups" not in cmd
    lat, thr = cmds["latency"], cmds["throughput"]
    assert (int(flag(lat, "--input-len")), int(flag(lat, "--output-len")), flag(lat, "--batch-size")) == \
        (wl["input_len"], wl["output_len"], "1")
    assert (int(flag(thr, "--random-input-len")), int(flag(thr, "--random-output-len")),
            int(flag(thr, "--num-prompts"))) == (wl["input_len"], wl["output_len"], wl["num_prompts"])
    graphs = gpu_run.bench_commands(perf, ["vllm"], tmp_path, "g", eager=False, warmups=True)["throughput"]
    assert "--enforce-eager" not in graphs and int(flag(graphs, "--num-warmups")) == wl["num_prompts"]

    # vLLM's answers, half as fast as perf measured: perf over vLLM is 2 for both (speed over speed)
    (tmp_path / "BF16_eager_latency.json").write_text(json.dumps(
        {"avg_latency": 2 * perf["latency"]["batch1_e2e"]["mean"], "latencies": [0.1] * 10}))
    (tmp_path / "BF16_eager_throughput.json").write_text(json.dumps(
        {"requests_per_second": perf["throughput"]["requests_per_s"]["median"] / 2}))
    got = gpu_run.ratios(perf, tmp_path, "BF16_eager")
    assert got["batch1_latency"]["speed_ratio"] == pytest.approx(2.0)
    assert got["throughput"]["speed_ratio"] == pytest.approx(2.0)
    assert got["batch1_latency"]["vllm_bench_n"] == 10


def test_the_gpu_experiment_plans_every_scheme_with_and_without_vllms_fp8_cache(tmp_path):
    from ptq_deploy.suite.experiment import load
    from ptq_deploy.suite.plan import RunOptions, plan

    exp = load("smollm2-135m-gpu")
    steps = plan(exp, RunOptions(results_dir=tmp_path, dry_run=True))
    quantized = [n for n in exp.schemes if n != exp.baseline]
    assert {s.cell for s in steps} == {exp.baseline, *quantized, *(f"{n}+kv-fp8" for n in quantized)}
    assert steps[0].cell == exp.baseline and {s.step for s in steps} == {"compress", "inspect", "perf", "eval"}
    compress = {s.cell: s.key for s in steps if s.step == "compress"}
    assert all(compress[n] != compress[f"{n}+kv-fp8"] for n in quantized)  # the fp8 cells carry calibrated scales
    assert exp.models[0].engine.enforce_eager and (exp.compress.num_samples, exp.compress.max_seq_len) == (64, 512)


def test_a_random_model_of_a_shipped_config_keeps_its_architecture(tmp_path):
    """``python -m ptq_deploy.tiny --config ... --shrink``: the 8B job's model at two layers, as its dry run builds
    it; the architecture, vocabulary, attention layout and RoPE scaling are the config's."""
    import subprocess

    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from ptq_deploy import environments
    from ptq_deploy.models import resolve

    config = ROOT / "ptq_deploy" / "data" / "model_configs" / "meta-llama--Llama-3.1-8B.json"
    out = tmp_path / "m"
    subprocess.run([sys.executable, "-m", "ptq_deploy.tiny", "--config", str(config), "--tokenizer",
                    resolve("default").path, "--out", str(out), "--shrink"], check=True,
                   env=environments.subprocess_env(), capture_output=True)
    want, got = json.loads(config.read_text()), AutoConfig.from_pretrained(out)
    assert got.architectures == want["architectures"] and got.vocab_size == want["vocab_size"]
    assert got.num_hidden_layers == 2
    assert got.num_attention_heads // got.num_key_value_heads == want["num_attention_heads"] // want["num_key_value_heads"]
    assert got.rope_parameters["rope_type"] == want["rope_scaling"]["rope_type"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
        assert emb.shape == (want["vocab_size"], 256) and emb.dtype == torch.bfloat16
        assert 0.015 < emb.float().std().item() < 0.025  # random, at the config's initializer_range (0.02)
    assert (out / "tokenizer.json").exists()
