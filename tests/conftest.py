"""Shared fixtures: a tiny random Llama built in-session, compressed checkpoints, shared vLLM engines.

``make test`` runs the suite in pytest-xdist workers (one per core). What a session makes once (the tiny model,
the compressed checkpoints, the measured probe) is made once for all workers: the first worker to need it makes
it under a file lock in the run's shared directory, the others read it from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from ptq_deploy.settings import settings  # stdlib only: nothing here imports huggingface_hub before the env below

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each xdist worker's vLLM engines on one core (round robin): vLLM's CPU backend binds its OpenMP threads to every
# core ("auto"), so the workers' engines would spin against each other on the same cores. A run's `--lanes`
# rebinds each lane's engines to its own cores (suite.lanes).
if os.environ.get("PTQ_TEST_BIND", "1") == "1" and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          str(_cores[int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")) % len(_cores)]))
# no hub here: ask it nothing (huggingface_hub reads these once, at import, so they are set before any import)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the session's own probe directory (CLI subprocesses inherit it): empty, so what runs here is the static
# rules until the ``probe`` fixture has put the measured probe there; never the user's probe directory itself
# (xdist workers inherit the controller's environment, so the user's directory is passed on by name)
USER_PROBE_DIR = Path(os.environ.setdefault("PTQ_TEST_USER_PROBE_DIR", str(settings().probe_dir)))
os.environ["PTQ_DEPLOY_PROBE_DIR"] = tempfile.mkdtemp(prefix="ptq-test-probe-")
# every test compresses for itself; test_suite's reuse test turns checkpoint reuse on in its own store
os.environ["PTQ_DEPLOY_CHECKPOINT_CACHE"] = "off"


# fixtures that compress, load a vLLM engine or measure the probe: a test using one (directly or through another
# fixture) is an integration test, so `pytest -m "not integration"` is the fast tier without a hand-kept list
HEAVY_FIXTURES = {"compressed", "probe", "runs_here", "fake_probe", "not_runnable_here", "engines",
                  "embedded_model", "embedded_compressed", "quick_quant", "engine_model", "serial_run"}


# The longest files first: `make test` hands whole files to its xdist workers in collection order
# (`--dist loadfile --no-loadscope-reorder`), so the files that start last are short ones and the workers finish
# together. A file's cost is its seconds in the last run here (pytest's cache), else FILE_SECONDS_HINT, else a guess
# from its tests.
FILE_SECONDS = "ptq-deploy/file-seconds"
INTEGRATION_GUESS_S, UNIT_GUESS_S = 15.0, 0.3
# a fresh clone has no cache: the heavy files' seconds in `make test` on the 2-core AMX CPU (2026-12-06, pytest
# --durations; a run here replaces them with its own). Only the order depends on them, never a result.
FILE_SECONDS_HINT = {"tests/test_perf.py": 210, "tests/test_compress_schemes.py": 190, "tests/test_commands.py": 190,
                     "tests/test_suite.py": 180, "tests/test_eval.py": 140, "tests/test_ray.py": 130,
                     "tests/test_lanes.py": 70, "tests/test_compress.py": 67, "tests/test_cli.py": 67,
                     "tests/test_models.py": 48, "tests/test_kv.py": 40, "tests/test_report.py": 35,
                     "tests/test_inspect.py": 33, "tests/test_fakequant.py": 26, "tests/test_envs.py": 25,
                     "tests/test_dequantize.py": 20, "tests/test_probe.py": 11}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    seen = cache.get(FILE_SECONDS, {}) if cache is not None else {}
    guess: dict[str, float] = {}
    for item in items:
        heavy = item.get_closest_marker("integration") is not None
        guess[_file(item.nodeid)] = guess.get(_file(item.nodeid), 0.0) + (INTEGRATION_GUESS_S if heavy else UNIT_GUESS_S)
    cost = {f: seen.get(f, FILE_SECONDS_HINT.get(f, g)) for f, g in guess.items()}
    items.sort(key=lambda it: -cost[_file(it.nodeid)])  # stable: a file's tests keep their order


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _seconds[_file(report.nodeid)] = _seconds.get(_file(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    """Keep each file's seconds for the next run's order (the controller sees every worker's reports)."""
    if hasattr(session.config, "workerinput") or getattr(session.config, "cache", None) is None or not _seconds:
        return
    known = session.config.cache.get(FILE_SECONDS, {})
    session.config.cache.set(FILE_SECONDS, {**known, **{f: round(s, 1) for f, s in _seconds.items()}})


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """The run's directory shared by every xdist worker (each worker's base temp is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(path: Path, make: Callable[[Path], object]) -> Path:
    """``path``, made by ``make(path)`` by the first worker to ask (the others wait for it, then read it)."""
    with FileLock(f"{path}.lock"):
        if not path.exists():
            make(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(shared) -> Path:
    from ptq_deploy.tiny import build_tiny_llama

    return made_once(shared / "tiny-llama", build_tiny_llama)


@pytest.fixture(scope="session")
def engine_model(tiny_model) -> Path:
    """The tiny Llama, for a test that loads it in vLLM itself (an engine, ``vllm serve``, a ``perf`` process)."""
    return tiny_model


@pytest.fixture(scope="session")
def ckpt_dir(shared) -> Path:
    (shared / "ckpts").mkdir(exist_ok=True)
    return shared / "ckpts"


COMPRESS_RESULTS: dict[str, object] = {}  # checkpoint path -> its CompressResult


def austen_ppl_per_document(ckpt: Path, backend: str, max_model_len: int, limit: int = 4):
    """``(eval result, each document's log-likelihood)``: austen_ppl scored float32 on ``backend`` (the
    dense-copy tests compare what is computed, not bf16 rounding)."""
    from ptq_deploy.engine import EngineConfig
    from ptq_deploy.eval import EvalConfig, run_eval

    res = run_eval(EvalConfig(checkpoint=str(ckpt), backend=backend, tasks=["austen_ppl"], limit=limit, write=False,
                              engine=EngineConfig(max_model_len=max_model_len, dtype="float32")))
    return res, [ll for ll, _ in res.tasks["austen_ppl"].per_sample.values["word_perplexity"]]


def worst_relative_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def _compressed_once(ckpt_dir: Path, name: str, config: Callable[[Path], object]) -> Path:
    """The checkpoint ``config(out)`` compresses, made once per run; its ``CompressResult`` kept beside it."""
    from ptq_deploy.compress import CompressResult, compress

    def make(out: Path) -> None:
        compress(config(out)).write(out.with_name(f"{out.name}.compress.json"))

    out = made_once(ckpt_dir / name, make)
    if str(out) not in COMPRESS_RESULTS:
        COMPRESS_RESULTS[str(out)] = CompressResult.model_validate_json(
            out.with_name(f"{out.name}.compress.json").read_text())
    return out


def _name(scheme: str, opts: dict, prefix: str = "") -> str:
    return f"{prefix}{scheme}-{hashlib.sha256(repr(sorted(opts.items())).encode()).hexdigest()[:8]}"


@pytest.fixture(scope="session")
def compressed(tiny_model, ckpt_dir):
    """``compressed(scheme, **opts)`` -> checkpoint path, made once per run via the real product path."""
    from ptq_deploy.compress import CalibrationSettings, CompressConfig

    def make(scheme: str, **opts) -> Path:
        return _compressed_once(ckpt_dir, _name(scheme, opts), lambda out: CompressConfig(
            model=str(tiny_model), scheme=scheme, output=out,
            calibration=CalibrationSettings(num_samples=8, max_seq_len=64), **opts))

    return make


@pytest.fixture(scope="session")
def probe(compressed, shared):
    """The real probe of this machine (what every "runs here?" question then reads): the one ``make setup``
    measured just before, where the same probe code measured it for this vLLM build and hardware; else measured
    once per run, handed the quantized checkpoints the session makes anyway (it compresses INT8-W8A16 itself
    through the product's compress path). Each worker reads it from its own probe directory (``fake_probe``
    rewrites that one)."""
    from ptq_deploy.hardware import detect
    from ptq_deploy.probe import ProbeResult, cache_path, method_digest, vllm_build
    from ptq_deploy.probe.run import run_probe

    def measure(path: Path) -> None:
        setup = USER_PROBE_DIR / cache_path(vllm_build(), detect()).name
        if setup.is_file() and ProbeResult.model_validate_json(setup.read_text()).method == method_digest():
            shutil.copyfile(setup, path)
            return
        given = {"fp8-w8a8": compressed("FP8-W8A8"), "int8-w8a8": compressed("INT8-W8A8"),
                 "w4a16": compressed("INT4-W4A16-RTN", group_size=64)}
        run_probe(checkpoints=given).write(path)

    measured = made_once(shared / "probe.json", measure)
    mine = cache_path(vllm_build(), detect())
    if not mine.exists():
        mine.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(measured, mine)
    return ProbeResult.model_validate_json(mine.read_text())


@pytest.fixture(scope="session")
def runs_here(probe):
    """``runs_here(scheme)`` / ``runs_here(kv_cache_dtype=...)``: the probe's answer (measured on this machine)."""
    from ptq_deploy import probe as probe_mod
    from ptq_deploy.compress import schemes
    from ptq_deploy.hardware import detect

    rules = probe_mod.rules(detect())
    assert rules.probe is not None and rules.probe.started_at == probe.started_at

    def ask(scheme: str | None = None, kv_cache_dtype: str | None = None):
        return rules.kv(kv_cache_dtype) if kv_cache_dtype else rules.scheme(schemes.get(scheme))

    return ask


@pytest.fixture
def fake_probe(probe):
    """``fake_probe(w8a16=False, ..., ms_per_token={"fp8-w8a8": 50.0})``: the measured probe with those cases'
    answers (or speeds) replaced, written where the real one is cached; the real one is put back after the test."""
    from ptq_deploy.hardware import detect
    from ptq_deploy.probe import cache_path

    path = cache_path(probe.vllm_build, detect())

    def write(ms_per_token: dict[str, float] | None = None, **runnable: bool):
        dense = probe.cases["dense"].ms_per_token  # a case faked to run, runs at the dense speed
        cases = {k: c.model_copy(update={"runnable": runnable[k], "phase": "done" if runnable[k] else "load",
                                         "error": None if runnable[k] else "faked", "kernel": "FakeKernel",
                                         "ms_per_token": dense if runnable[k] else None})
                 if k in runnable else c for k, c in probe.cases.items()}
        cases = {k: c.model_copy(update={"ms_per_token": (ms_per_token or {})[k]}) if k in (ms_per_token or {}) else c
                 for k, c in cases.items()}
        fake = probe.model_copy(update={"cases": cases})
        fake.write(path, force=True)
        return fake

    yield write
    probe.write(path, force=True)


# the calibration-free quantized schemes (the same checkpoint wherever it is made), by probe case
RTN_SCHEMES = {"fp8-w8a8": ("FP8-W8A8", {}), "w4a16": ("INT4-W4A16-RTN", {"group_size": 64}),
               "w8a16": ("INT8-W8A16-RTN", {})}


@pytest.fixture(scope="session")
def quick_quant(probe) -> tuple[str, dict]:
    """``(scheme, compress options)``: the calibration-free quantized scheme vLLM runs fastest here, as the probe
    timed it (an emulated FP8 kernel can cost a hundred times a dense one on some CPUs, none on others)."""
    runs = sorted((probe.cases[k].ms_per_token, s, tuple(o.items())) for k, (s, o) in RTN_SCHEMES.items()
                  if probe.cases[k].runnable and probe.cases[k].ms_per_token is not None)
    assert runs, "no calibration-free quantized scheme runs in vLLM here"
    return runs[0][1], dict(runs[0][2])


SUITE_PERF = {"num_prompts": 4, "input_len": 16, "output_len": 8, "iterations": 1, "warmup": 0, "serving": False,
              "latency_prompts": 2}


@pytest.fixture(scope="session")
def tiny_suite(tiny_model, quick_quant) -> dict:
    """An experiment on the tiny model: BF16, the fastest calibration-free scheme here and INT8-W8A16-RTN, every
    step, small settings; an accuracy and a perplexity task (test_report reads its run)."""
    quant, opts = quick_quant
    return {"name": "tiny", "schemes": list(dict.fromkeys(["BF16", quant, "INT8-W8A16-RTN"])),
            "models": [{"name": "tiny", "source": str(tiny_model), "group_size": opts.get("group_size"),
                        "engine": {"max_model_len": 256}}],
            "compress": {"num_samples": 4, "max_seq_len": 32}, "perf": SUITE_PERF,
            "eval": {"tasks": ["austen_cloze", "austen_ppl"], "limit": 4}}


@pytest.fixture(scope="session")
def serial_run(tiny_suite, shared) -> Path:
    """``tiny_suite`` run once per test run, serially in-process: its results dir (test_suite and test_report read
    it, test_lanes and test_ray compare their runs with it)."""
    from ptq_deploy.suite.execute import run
    from ptq_deploy.suite.experiment import Experiment
    from ptq_deploy.suite.plan import RunOptions

    return made_once(shared / "suite-serial", lambda root: run(Experiment(**tiny_suite), RunOptions(results_dir=root)))


# cheap checkpoints of each quantized kernel family: (scheme, compress options)
FAMILY_CHECKPOINTS = {"w8a16": ("INT8-W8A16-RTN", {}), "w4a16": ("INT4-W4A16-RTN", {"group_size": 64}),
                      "fp8-w8a8": ("FP8-W8A8", {}), "int8-w8a8": ("INT8-W8A8", {})}


@pytest.fixture
def not_runnable_here(probe, compressed, fake_probe):
    """``(scheme, checkpoint, why)`` that vLLM cannot run here as the probe measured it; where every family
    runs (a large GPU), INT8-W8A16-RTN with a faked probe answer."""
    for key, (scheme, opts) in FAMILY_CHECKPOINTS.items():
        if probe.cases[key].runnable is False:
            return scheme, compressed(scheme, **opts), probe.cases[key].error
    fake_probe(w8a16=False)
    return "INT8-W8A16-RTN", compressed("INT8-W8A16-RTN"), "faked"


class _Engines:
    """One vLLM engine at a time, shared across tests; switching checkpoints shuts the old one down."""

    def __init__(self):
        self.path, self.llm, self.info = None, None, None

    def get(self, path: Path):
        from ptq_deploy import engine

        if self.path != str(path):
            self.close()
            self.llm, self.info = engine.load(path, engine.EngineConfig(max_model_len=512))
            self.path = str(path)
        return self.llm, self.info

    def close(self):
        if self.llm is not None:
            from ptq_deploy import engine

            engine.shutdown(self.llm)
            self.llm, self.path = None, None


@pytest.fixture(scope="module")
def engines():
    """A module's engine cache, closed after it: an in-process engine another module loads resets vLLM's state."""
    e = _Engines()
    yield e
    e.close()


CONSOLE_SCRIPT = Path(sys.executable).with_name("ptq-deploy")  # installed by `make setup` (editable)
USER_DIR = Path(tempfile.mkdtemp(prefix="ptq-test-user-"))  # where a user would type it: outside the checkout


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``ptq-deploy ARGS`` as a user types it: the installed console script, from outside the checkout."""
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=USER_DIR)


@pytest.fixture
def cli():
    return run_cli


def no_temp_siblings(out: Path) -> bool:
    return not list(out.parent.glob(f".ptq-tmp-{out.name}-*"))


# INT4 schemes need group 64 on SmolLM2-135M (hidden size 576 is not a multiple of 128)
EMBEDDED_GROUP = 64


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    from ptq_deploy.models import resolve

    return Path(resolve("default").path)


@pytest.fixture(scope="session")
def embedded_compressed(embedded_model, ckpt_dir):
    """``embedded_compressed(scheme)`` -> SmolLM2-135M checkpoint, compressed once per session. Small
    calibration to keep CI fast: 4 x 64 tokens (GPTQ's layer-by-layer passes and AWQ's grid search scale with
    them; INT8-W8A8 calibrated so still generates what BF16 does: test_vllm_greedy_output_stays_close_to_bf16,
    whose bounds it met with 16 x 128 and with 4 x 64)."""
    from ptq_deploy.compress import CalibrationSettings, CompressConfig, schemes

    def make(scheme: str, **opts) -> Path:
        if schemes.get(scheme).group_size:
            opts.setdefault("group_size", EMBEDDED_GROUP)
        cal = CalibrationSettings(num_samples=4, max_seq_len=64)
        return _compressed_once(ckpt_dir, _name(scheme, opts, "smollm2-"), lambda out: CompressConfig(
            model="default", scheme=scheme, output=out, calibration=cal, **opts))

    return make

