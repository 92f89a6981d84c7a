"""Benchmark: the ready experiment end to end (``make demo``'s job), with the time of every step; writes JSON.

    python scripts/bench_ready_experiment.py [--experiment smollm2-135m] [--results-dir DIR] [--out perf_results/]
    python scripts/bench_ready_experiment.py --make-demo     # in a fresh clone: `make demo` itself, timed whole

Runs ``ptq-deploy run EXPERIMENT`` into a fresh results dir (or DIR: a rerun there times only what is
left), then ``ptq-deploy report``, each as the CLI a user runs, and records the wall time of both, every
step's duration, start (seconds after the run's first step began) and status from the step records, and
the totals per step kind, and the report's recommendation and serving regimes. With ``--make-demo`` it runs ``make demo`` in this checkout instead (setup
check, run and report as a newcomer gets them; ``results/smollm2-135m`` must not exist yet) and records
its wall time. Checkpoint reuse is off either way: the time is a fresh clone's. The record is what the
next change to the ready experiment is measured against.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

# this checkout's ptq_deploy, whose revision the record names: the environment's editable link may still point at
# another clone (`make demo` relinks it only once it runs)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptq_deploy.errors import UsageError  # noqa: E402
from ptq_deploy.provenance import Provenance, collect  # noqa: E402
from ptq_deploy.report import build_report  # noqa: E402
from ptq_deploy.results import atomic_write_json  # noqa: E402
from ptq_deploy.suite import layout  # noqa: E402
from ptq_deploy.suite.experiment import load  # noqa: E402
from ptq_deploy.timeutil import file_stamp  # noqa: E402


class StepTime(BaseModel):
    model: str
    cell: str
    step: str
    status: str
    seconds: float
    start_s: float | None = None  # after the first step's start (lanes: steps overlap)


class BenchRecord(BaseModel):
    kind: str = "bench-ready-experiment"
    experiment: dict
    results_dir: str
    command: str = "ptq-deploy run + ptq-deploy report"
    lanes: int = 1  # cells whose untimed steps ran at once: seconds_by_step then sums lane-seconds
    run_wall_s: float | None  # None with --make-demo (one command: see total_wall_s)
    run_exit_code: int
    report_wall_s: float | None
    total_wall_s: float
    steps: list[StepTime]
    seconds_by_step: dict[str, float]
    recommendations: dict[str, str] = {}  # model -> the report's recommendation sentence
    regimes: dict[str, list[str]] = {}  # model -> each serving regime's sentence, crossovers, untimed schemes
    provenance: Provenance


def _timed(cmd: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    return rc, time.perf_counter() - t0


def _cli(*args: str) -> tuple[int, float]:
    return _timed([sys.executable, "-m", "ptq_deploy.cli", *args])


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smollm2-135m")
    ap.add_argument("--results-dir", type=Path, default=None, help="default: a fresh temporary directory")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    ap.add_argument("--lanes", type=int, default=min(2, len(os.sched_getaffinity(0))),
                    help="run --lanes (make demo's default: 2 where there are 2 CPUs)")
    ap.add_argument("--make-demo", action="store_true", help="time `make demo` in this checkout instead")
    a = ap.parse_args()
    os.environ["PTQ_DEPLOY_CHECKPOINT_CACHE"] = "off"  # a fresh clone's time: compress everything
    exp = load(a.experiment)
    if a.make_demo:
        root = Path("results") / exp.name
        if root.exists():
            sys.exit(f"{root} exists: --make-demo times a fresh clone's `make demo`; move it away first")
        run_rc, total_s = _timed(["make", "demo", f"LANES={a.lanes}"])
        run_s = report_s = None
        report_rc = 0
    else:
        root = a.results_dir or Path(tempfile.mkdtemp(prefix="ptq-ready-")) / exp.name
        run_rc, run_s = _cli("run", a.experiment, "-o", str(root), "--lanes", str(a.lanes))
        report_rc, report_s = _cli("report", str(root))
        total_s = run_s + report_s
    records = layout.records(root)
    t0 = min((datetime.fromisoformat(r.started_at) for r in records if r.started_at), default=None)
    steps = [StepTime(model=r.model, cell=r.cell, step=r.step, status=r.status, seconds=round(r.duration_s, 1),
                      start_s=round((datetime.fromisoformat(r.started_at) - t0).total_seconds(), 1)
                      if r.started_at else None)
             for r in sorted(records, key=lambda r: r.started_at)]
    by_step: dict[str, float] = defaultdict(float)
    for s in steps:
        by_step[s.step] += s.seconds
    recs, regs = {}, {}
    try:
        rep = build_report(root)
    except UsageError as e:  # a run that wrote nothing to report: the timings are still the record
        print(f"report: {e}", file=sys.stderr)
        rep = None
    for lb in rep.leaderboards if rep else []:
        recs[lb.model] = lb.recommendation.why
        if lb.regimes is not None:
            regs[lb.model] = [f"{r.regime}{f' ({r.shape})' if r.shape else ''}: {r.text}" for r in lb.regimes.results] \
                + lb.regimes.crossovers + lb.regimes.untimed
    rec = BenchRecord(experiment=exp.model_dump(mode="json"), results_dir=str(root.resolve()), lanes=a.lanes,
                      command="make demo" if a.make_demo else BenchRecord.model_fields["command"].default,
                      run_wall_s=_round(run_s), run_exit_code=run_rc, report_wall_s=_round(report_s),
                      total_wall_s=round(total_s, 1),
                      steps=steps, seconds_by_step={k: round(v, 1) for k, v in by_step.items()},
                      recommendations=recs, regimes=regs,
                      provenance=collect(compress_env=True))
    path = atomic_write_json(a.out / f"bench_ready_experiment_{exp.name}_{file_stamp()}.json", rec)
    for s in steps:
        print(f"{s.start_s if s.start_s is not None else '':>7} {s.cell:18s} {s.step:9s} {s.status:13s} {s.seconds:8.1f} s")
    print(f"{rec.command}: {total_s:.0f} s (exit {run_rc or report_rc}); by step: {dict(rec.seconds_by_step)} -> {path}")
    sys.exit(run_rc or report_rc)


if __name__ == "__main__":
    main()
