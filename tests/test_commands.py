"""Every command as a user types it: the installed ``ptq-deploy`` console script, run in a directory outside the
checkout with relative paths, on a tiny Llama and a tiny Qwen2 (another architecture: biased q/k/v projections).

Each asserts exit 0 and no traceback, that what the user reads carries the figures the result file holds (read
back as its kind), not only that a file exists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import CONSOLE_SCRIPT, REPO

from ptq_deploy.checkpoint import metadata
from ptq_deploy.compress import schemes
from ptq_deploy.eval.result import EvalResult
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint
from ptq_deploy.kvcache.result import KVResult
from ptq_deploy.perf.result import PerfResult
from ptq_deploy.report import build_report
from ptq_deploy.report.render import interval
from ptq_deploy.suite import layout
from ptq_deploy.tiny import build_tiny

INT4 = ("INT4-W4A16-RTN", "64")  # the tiny models' hidden size 192 takes group 64


def ptq(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``ptq-deploy ARGS`` in ``cwd``; never a traceback, whatever the exit code."""
    p = subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in p.stdout + p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def ok(cwd: Path, *args: str) -> str:
    p = ptq(cwd, *args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def wrote(stdout: str) -> Path:
    """The file a command says it wrote (``wrote PATH``)."""
    return Path(re.findall(r"^wrote (\S+)", stdout, re.M)[-1])


def cell(stdout: str, label: str) -> str:
    """The first figure of a table row whose first cell is ``label``."""
    row = next(ln for ln in stdout.splitlines() if re.match(rf"^\W*{re.escape(label)}\s*│", ln))
    return row.split("│")[2].split()[0]


@dataclass
class User:
    home: Path  # the directory the user works in, outside the checkout
    model: str  # the model directory, relative to home
    arch: str


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def user(request, tmp_path_factory, tiny_model) -> User:
    home = tmp_path_factory.mktemp(f"user-{request.param}")
    assert REPO not in home.parents
    if request.param == "llama":
        (home / "tiny").symlink_to(tiny_model)
    else:
        build_tiny(home / "tiny", "qwen2")
    return User(home=home, model="tiny", arch=request.param)


# ---------------------------------------------------------------- no engine
def test_doctor_and_schemes(tmp_path):
    text = ok(tmp_path, "doctor")
    assert "environments" in text and "what runs here" in text
    rep = json.loads(ok(tmp_path, "doctor", "--json"))
    for name, s in rep["schemes"].items():  # the console table shows each scheme's measured answer
        row = next(ln for ln in text.splitlines() if re.match(rf"^\W*{re.escape(name)}\s*│", ln))
        assert ("yes" if s["runnable"] else "no") == row.split("│")[2].strip(), row
    listed = ok(tmp_path, "schemes")
    assert all(n in listed for n in schemes.registry())
    recipe = ok(tmp_path, "schemes", "show", "INT4-W4A16", "--group-size", "32")
    assert "GPTQModifier" in recipe and "group_size: 32" in recipe


def test_model_prints_a_loadable_directory(user):
    path = Path(ok(user.home, "model", user.model).strip())
    assert path == (user.home / user.model).resolve()
    assert json.loads((path / "config.json").read_text())["model_type"] == user.arch


# ---------------------------------------------------------------- one checkpoint, every command
def _walk_once(user: User) -> None:
    """Each command that compresses or loads an engine runs once per suite, on the model that is not Llama-shaped:
    the rest of the suite drives the tiny Llama through the same paths (test_compress, test_perf, test_eval,
    test_lanes, test_report)."""
    if user.arch != "qwen2":
        pytest.skip("commands that compress or load an engine run once, on the Qwen2 model")


@pytest.mark.integration
def test_compress_inspect(user):
    _walk_once(user)
    out = ok(user.home, "compress", user.model, "-s", INT4[0], "--group-size", INT4[1], "-o", "ckpt/int4")
    ckpt = user.home / "ckpt" / "int4"
    meta, problem = metadata.read(ckpt)
    assert problem is None and meta.scheme == INT4[0] and meta.group_size == int(INT4[1])
    mib = float(re.search(rf"^wrote {re.escape(str(ckpt.resolve()))} \({INT4[0]}, ([\d.]+) MiB", out, re.M).group(1))
    assert mib == pytest.approx(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20, abs=0.051)
    assert "offloaded modules" not in out

    text = ok(user.home, "inspect", "ckpt/int4")
    rep = inspect_checkpoint(InspectConfig(checkpoint=ckpt))  # what `inspect --json` prints (test_inspect)
    assert rep.ok and rep.quantization.weights.group_size == int(INT4[1]) and rep.model_type == user.arch
    assert f"{rep.linear_bits_per_weight:.3f} quantized" in text
    assert f"(group {INT4[1]})" in text and "OK: the checkpoint carries what its config claims" in text


@pytest.mark.integration
def test_generate_and_perf(user):
    _walk_once(user)
    text = ok(user.home, "generate", "ckpt/int4", "-p", "It was a truth", "--max-tokens", "4")
    assert text.startswith("It was a truth") and "vLLM quantization=compressed-tensors" in text
    out = ok(user.home, "perf", "ckpt/int4", "--no-serving", "--num-prompts", "4", "--input-len", "16",
             "--output-len", "8", "--iterations", "1", "--warmup", "0", "--max-model-len", "256", "--output-dir", "p")
    res = PerfResult.read(user.home / wrote(out))
    assert wrote(out).parent == Path("p") and res.identity.scheme == INT4[0]
    assert f"perf {res.identity.label}" in out
    assert cell(out, "batch-1 e2e latency ms") == f"{res.latency.batch1_e2e.median * 1e3:.3g}"
    assert cell(out, "output tok/s") == f"{res.throughput.output_tokens_per_s.median:.3g}"
    assert "WARNING" not in out  # vLLM's own warnings went to its log file, results to stdout


@pytest.mark.integration
def test_eval_against_the_baseline(user):
    _walk_once(user)
    out = ok(user.home, "eval", "ckpt/int4", "--baseline", user.model, "--tasks", "austen_ppl", "--limit", "4",
             "--max-model-len", "512", "--output-dir", "e")
    res = EvalResult.read(user.home / wrote(out))
    rec = next(r for r in res.recovery if r.metric == "word_perplexity")
    assert res.baseline is not None and rec.recovery is not None
    row = next(ln for ln in out.splitlines() if "word_perplexity" in ln)
    assert f"{rec.quantized:.4g}" in row and f"{rec.baseline:.4g}" in row and f"{rec.recovery * 100:.1f}%" in row
    assert rec.verdict in row
    assert "fatal:" not in out + ptq(user.home, "eval", "nope").stderr


# ---------------------------------------------------------------- the matrix and the KV track (one architecture)
@pytest.mark.integration
def test_kv_run_report(user):
    _walk_once(user)
    out = ok(user.home, "kv", user.model, "-m", "kivi-int4,fp8-uncalibrated", "--lengths", "256", "--samples", "1",
             "--documents", "0", "--output-dir", "k")
    kv = KVResult.read(user.home / wrote(out))
    rows = {m.method: m for m in kv.methods}
    row = rows["kivi-int4"]
    assert row.bytes_ratio < 1 and f"({row.bytes_ratio:.2f}x)" in out
    fp8 = rows["fp8-uncalibrated"]  # in the engine, against vLLM's auto cache; its cost measured there
    assert (fp8.backend, rows["auto"].backend, row.backend) == ("vllm", "vllm", "transformers")
    cost = next(ln for ln in out.splitlines() if ln.lstrip("│ ").startswith("fp8 (fp8-uncalibrated)"))
    assert f"{fp8.cost.capacity_tokens:,}" in cost and f"{fp8.cost.decode_ms_per_token[256].median:.2f}" in cost

    (user.home / "exp.yaml").write_text(yaml.safe_dump({
        "name": "walk", "models": [{"name": "tiny", "source": user.model, "group_size": 64,
                                    "engine": {"max_model_len": 256}}],
        "schemes": ["BF16", INT4[0]], "compress": {"num_samples": 4, "max_seq_len": 32},
        "eval": {"tasks": ["austen_ppl"], "limit": 4}, "steps": ["compress", "inspect", "eval"]}))
    out = ok(user.home, "run", "exp.yaml")  # perf ran above as its own command; test_report reads a run's perf
    root = user.home / "results" / "walk"
    assert {r.status for r in layout.records(root)} == {"ok"}
    assert re.search(r"^walk: 6 steps done, 0 failed, results in results/walk \(\d+ s\)$", out, re.M)
    out = ok(user.home, "report", "results/walk")
    board = build_report(root).leaderboards[0]
    for r in board.rows:  # the console leaderboard carries each row's measured recovery
        row = next(ln for ln in out.splitlines() if re.search(rf"│\s*{re.escape(r.scheme)}\b", ln))
        shown = interval(r.worst_recovery_pct, r.worst_recovery_low_pct, r.worst_recovery_high_pct)
        assert r.worst_recovery_pct is not None and f"│ {shown} " in row, row
    assert (root / "report" / "leaderboard.md").is_file()
