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


def test_vllm_benchmarks_get_the_perf_steps_engine_and_workload(gpu_run, tmp_path):
    """The flags and variables come from the product's own ``engine.args`` in the runtime environment (one road from
    settings to vLLM): the flags equal to the perf engine's ``LLM()`` arguments, its in-process variables."""
    from ptq_deploy import environments
    from ptq_deploy.engine.args import llm_kwargs
    from ptq_deploy.engine.config import ResolvedEngine

    perf = json.loads(PERF.read_text())
    wl = perf["workload"]
    flags, env = gpu_run.perf_engine(sys.executable, perf, environments.subprocess_env())
    kwargs = llm_kwargs(ResolvedEngine.model_validate(perf["engine"]["settings"]))
    assert flags[flags.index("--max-model-len") + 1] == str(kwargs["max_model_len"])
    assert ("--enforce-eager" in flags) == kwargs["enforce_eager"] and "--model" not in flags
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # this record's engine ran in-process, on a CPU
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(perf["engine"]["settings"]["cpu_kvcache_space_gib"])
    cmds = gpu_run.bench_commands(perf, flags, ["vllm"], tmp_path, "BF16_eager", warmups=False)

    def flag(cmd, name):
        return cmd[cmd.index(name) + 1]

    for kind, cmd in cmds.items():
        assert cmd[:3] == ["vllm", "bench", kind] and flag(cmd, "--model") == perf["engine"]["model"]
        assert cmd[5:5 + len(flags)] == flags and "--disable-log-stats" in cmd and "--num-warmups" not in cmd
    lat, thr = cmds["latency"], cmds["throughput"]
    assert (int(flag(lat, "--input-len")), int(flag(lat, "--output-len")), flag(lat, "--batch-size")) == \
        (wl["input_len"], wl["output_len"], "1")
    assert (int(flag(thr, "--random-input-len")), int(flag(thr, "--random-output-len")),
            int(flag(thr, "--num-prompts"))) == (wl["input_len"], wl["output_len"], wl["num_prompts"])
    warm = gpu_run.bench_commands(perf, flags, ["vllm"], tmp_path, "g", warmups=True)["throughput"]
    assert int(flag(warm, "--num-warmups")) == wl["num_prompts"]

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
