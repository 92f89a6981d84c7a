"""Integration: the real llmcompressor (compress env, subprocess) and the real vLLM engine (this env)."""

import json
import subprocess
import time

import pytest
import yaml
from conftest import CONSOLE_SCRIPT, USER_DIR, no_temp_siblings
from safetensors import safe_open

from ptq_deploy import checkpoint, engine, environments
from ptq_deploy.checkpoint import RECIPE_FILE
from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress
from ptq_deploy.errors import NotRunnableHere, PtqError

pytestmark = pytest.mark.integration

FORMATS = {"FP8-W8A8": ("float-quantized", "F8_E4M3"), "INT8-W8A8": ("int-quantized", "I8")}


def _tensor_dtypes(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("scheme", list(FORMATS))
def test_compressed_checkpoint_is_really_quantized(compressed, tiny_model, scheme):
    ckpt = compressed(scheme)
    qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    fmt, dtype = FORMATS[scheme]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    assert qc["ignore"] == ["lm_head"]
    dtypes = _tensor_dtypes(ckpt)
    proj = [k for k in dtypes if k.endswith("proj.weight")]
    assert len(proj) == 2 * 7 and all(dtypes[k] == dtype for k in proj)
    assert all(k.replace(".weight", ".weight_scale") in dtypes for k in proj)
    assert dtypes["lm_head.weight"] == "BF16"
    ck = checkpoint.read(ckpt)  # ptq_deploy.json, read back typed
    assert ck.metadata_problem is None and ck.metadata.scheme == scheme and ck.scheme_name == scheme
    assert ck.quantization.name == scheme and ck.model_name == tiny_model.name
    assert ck.metadata.provenance.packages["llmcompressor"] == "0.14.0.1"
    assert ck.metadata.provenance.packages["compressed-tensors"] == "0.19.0"
    assert yaml.safe_load((ckpt / RECIPE_FILE).read_text()) == ck.metadata.recipe  # as llm-compressor ships it
    if scheme == "INT8-W8A8":
        assert ck.metadata.calibration.num_samples == 8 and len(ck.metadata.calibration.sha256) == 64
    else:
        assert ck.metadata.calibration is None
    assert no_temp_siblings(ckpt)


@pytest.mark.parametrize("scheme", list(FORMATS))
def test_vllm_loads_and_generates_deterministically(compressed, engines, scheme):
    llm, info = engines.get(compressed(scheme))
    assert info.quantization == "compressed-tensors"
    prompts = ["It is a truth universally acknowledged", "Mr Darcy said"]
    a = engine.generate(llm, prompts, max_tokens=12)
    b = engine.generate(llm, prompts, max_tokens=12)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert all(len(g.token_ids) == 12 or g.token_ids[-1] == 2 for g in a)


def test_force_replaces_only_after_success(compressed, tiny_model, tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "old.txt").write_text("old")
    res = compress(CompressConfig(model=str(tiny_model), scheme="FP8-W8A8", output=out, force=True))
    assert res.checkpoint_bytes > 0 and not (out / "old.txt").exists() and (out / "config.json").exists()
    assert res.peak_rss_bytes > 100 * 2**20 and res.wall_time_s > 0 and res.identity.scheme == "FP8-W8A8"
    assert "force" not in res.model_dump()["config"]  # run-control flags stay out of results
    assert no_temp_siblings(out)


def test_failed_compression_with_force_keeps_the_old_output(tiny_model, tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "old.txt").write_text("old")
    bad = CalibrationSettings(dataset=str(tmp_path / "no-such-calibration.jsonl"), num_samples=4, max_seq_len=32)
    with pytest.raises(PtqError, match="no-such-calibration"):  # fails inside the compress worker
        compress(CompressConfig(model=str(tiny_model), scheme="INT8-W8A8", output=out, calibration=bad, force=True))
    assert (out / "old.txt").read_text() == "old" and sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert no_temp_siblings(out)


def test_a_killed_compress_leaves_no_worker_behind(tiny_model, tmp_path):
    """``ptq-deploy compress`` killed with SIGKILL (no handler runs): its worker in the compress environment
    dies with it, and the output is not there."""
    import psutil

    out = tmp_path / "ck"
    p = subprocess.Popen([str(CONSOLE_SCRIPT), "compress", str(tiny_model), "--scheme", "INT8-W8A8", "-o", str(out),
                          "--num-samples", "64", "--max-seq-len", "256"], cwd=USER_DIR,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 120, []
    while not workers and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.5)
        workers = [c for c in psutil.Process(p.pid).children(recursive=True)
                   if "ptq_deploy.compress" in " ".join(c.cmdline())]
    assert workers, "the compress worker never started"
    p.kill()
    p.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [w.cmdline() for w in alive]
    assert not out.exists()


def test_awq_smooths_then_writes_asymmetric_int4_groups(compressed, tiny_model):
    """AWQ on the tiny model (on the embedded one its grid search costs minutes: the ready experiment runs it):
    its scales are folded into the norms before the linears, so those differ from the source; int4 groups
    with zero points; inspect agrees."""
    ck = compressed("INT4-W4A16-AWQ", group_size=64)
    qc = json.loads((ck / "config.json").read_text())["quantization_config"]
    w = qc["config_groups"]["group_0"]["weights"]
    assert qc["format"] == "pack-quantized" and (w["num_bits"], w["symmetric"], w["group_size"]) == (4, False, 64)
    with safe_open(str(ck / "model.safetensors"), "pt") as q, safe_open(str(tiny_model / "model.safetensors"), "pt") as b:
        mod = "model.layers.0.mlp.down_proj"
        (zo, zg), (so, sg) = (q.get_slice(f"{mod}.weight_{t}").get_shape() for t in ("zero_point", "scale"))
        assert zg == sg == 512 // 64 and zo * 32 // 4 == so == 192  # a 4-bit zero point per group, packed
        norm = "model.layers.0.post_attention_layernorm.weight"
        moved = (q.get_tensor(norm).float() - b.get_tensor(norm).float()).abs().max().item()
    assert moved > 1e-3, "AWQ changed no scale"
    assert checkpoint.read(ck).metadata.calibration.num_samples == 8
    from ptq_deploy.inspection import InspectConfig, inspect_checkpoint

    assert inspect_checkpoint(InspectConfig(checkpoint=ck)).ok


def test_int8_weight_only_is_packed(compressed):
    qc = json.loads((compressed("INT8-W8A16-RTN") / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" or qc["format"] == "int-quantized"


def test_unsupported_scheme_is_refused_before_loading(not_runnable_here):
    scheme, ckpt, why = not_runnable_here  # as the probe measured it on this machine
    with pytest.raises(NotRunnableHere, match="cannot run in vLLM here") as e:
        engine.load(ckpt, engine.EngineConfig())
    assert why in str(e.value)


def test_an_in_process_compression_reports_its_own_peak_not_the_process_one(tiny_model, tmp_path):
    """Where the compress environment is the caller's own (no managed one: a GPU host's single environment),
    the worker runs in-process; its peak RSS is this run's, not a high-water mark set earlier in the process."""
    script = """
import json, resource, sys
from pathlib import Path
import numpy as np
from ptq_deploy.compress import CompressConfig, compress
big = np.ones(3 * 2**30 // 8)  # 3 GiB touched, then freed: the process's high-water mark
del big
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
r = compress(CompressConfig(model=sys.argv[1], scheme="FP8-W8A8", output=Path(sys.argv[2])))
print(json.dumps({"before": before, "peak": r.peak_rss_bytes}))
"""
    env = {**environments.subprocess_env(), "PTQ_DEPLOY_HOME": str(tmp_path / "home")}  # no managed env: in-process
    proc = subprocess.run([environments.resolve_python("compress"), "-c", script, str(tiny_model), str(tmp_path / "ck")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 100 * 2**20 < got["peak"] < got["before"] - 2 * 2**30, got
    assert (tmp_path / "ck" / "config.json").is_file()


def test_autoround_calibrates_on_equal_length_chunks_of_the_same_tokens():
    """AutoRound's samples are never padded (worker.pack_equal_length says why): the shipped AutoRound recipe is
    recognised, GPTQ's is not, and the chunks are the EOS-joined texts cut to one length."""
    from ptq_deploy.compress import schemes
    from ptq_deploy.compress.worker import pack_equal_length, uses_autoround

    assert uses_autoround(schemes.get("INT4-W4A16-AUTOROUND").resolve(group_size=64).recipe)
    assert not uses_autoround(schemes.get("INT4-W4A16").resolve(group_size=64).recipe)
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]  # lengths 3, 2, 5, 1: padded to 5 before
    chunks = pack_equal_length(ids, 4, eos=0)
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10, 0, 11, 0]
    assert chunks == [stream[0:4], stream[4:8], stream[8:12]]  # the last 3 tokens fall short of a chunk
    assert pack_equal_length([[1, 2]], 8, eos=None) == [[1, 2]]  # shorter than one chunk: one chunk of it all


def test_compressions_share_one_warm_server_that_measurements_leave_out(tiny_model, tmp_path):
    """A process's compressions run in children forked from one compress-environment server (its libraries
    imported once); the server is no part of the process tree perf measures, and a server that died is replaced."""
    import os
    import signal

    import psutil

    from ptq_deploy.compress import _Server
    from ptq_deploy.engine import memory

    def run(scheme: str, name: str, **opts):
        return compress(CompressConfig(model=str(tiny_model), scheme=scheme, output=tmp_path / name, **opts))

    first = run("FP8-W8A8", "a")
    server = _Server._current.proc.pid
    assert server in {c.pid for c in psutil.Process().children()} and server not in memory.tree_pids()
    os.environ["PTQ_TEST_ONLY_THIS_JOB"] = "1"  # a variable no library reads at import: the same server
    try:
        second = run("INT4-W4A16-RTN", "b", group_size=64)
    finally:
        del os.environ["PTQ_TEST_ONLY_THIS_JOB"]
    assert _Server._current.proc.pid == server  # the second job was forked from the same server
    assert first.peak_rss_bytes > 0 and second.peak_rss_bytes > 0
    assert second.checkpoint.scheme == "INT4-W4A16-RTN" and (tmp_path / "b" / "config.json").is_file()
    os.kill(server, signal.SIGKILL)
    psutil.Process(server).wait(timeout=10)
    third = run("FP8-W8A8", "c")
    assert _Server._current.proc.pid != server and (tmp_path / "c" / "config.json").is_file()
    assert third.checkpoint.scheme == "FP8-W8A8"


def test_a_server_whose_imports_initialized_cuda_starts_each_job_fresh(tiny_model, tmp_path, monkeypatch, capfd):
    """CUDA does not survive a fork: where the driver answers that it was initialized (a stand-in ``libcuda.so.1``
    whose ``cuDeviceGetCount`` succeeds, as it does only after ``cuInit``), the server runs each job in a fresh
    interpreter instead of a forked child, and the job still writes its checkpoint."""
    import shutil
    import subprocess

    from ptq_deploy.compress import _Server, worker

    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in driver library")
    lib = tmp_path / "driver"
    lib.mkdir()
    (lib / "cuda.c").write_text("int cuDeviceGetCount(int *n) { *n = 1; return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"), str(lib / "cuda.c")], check=True)
    assert not worker.cuda_driver_initialized()  # this machine: no driver
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))  # an import-time variable: a new server, which loads the stand-in
    try:
        r = compress(CompressConfig(model=str(tiny_model), scheme="FP8-W8A8", output=tmp_path / "a"))
    finally:
        _Server.close()
    assert r.checkpoint.scheme == "FP8-W8A8" and (tmp_path / "a" / "config.json").is_file()
    assert "each compression starts a fresh interpreter" in capfd.readouterr().err
