"""Benchmark: the ready experiment end to end (``make demo``'s job), with the time of every step; writes JSON.

    python scripts/bench_ready_experiment.py [--experiment smollm2-135m] [--results-dir DIR] [--out perf_results/]

Runs ``ptq-deploy run EXPERIMENT`` into a fresh results dir (or DIR: a rerun there times only what is
left), then ``ptq-deploy report``, each as the CLI a user runs, and records the wall time of both, every
step's duration and status from the step records, and the totals per step kind. The record is what the
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
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.results import atomic_write_json
from ptq_deploy.suite import layout
from ptq_deploy.suite.experiment import load
from ptq_deploy.timeutil import file_stamp


class StepTime(BaseModel):
    model: str
    cell: str
    step: str
    status: str
    seconds: float


class BenchRecord(BaseModel):
    kind: str = "bench-ready-experiment"
    experiment: dict
    results_dir: str
    lanes: int = 1  # cells whose untimed steps ran at once: seconds_by_step then sums lane-seconds
    run_wall_s: float
    run_exit_code: int
    report_wall_s: float
    total_wall_s: float
    steps: list[StepTime]
    seconds_by_step: dict[str, float]
    provenance: Provenance


def _cli(*args: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "ptq_deploy.cli", *args]).returncode
    return rc, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smollm2-135m")
    ap.add_argument("--results-dir", type=Path, default=None, help="default: a fresh temporary directory")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    ap.add_argument("--lanes", type=int, default=min(2, len(os.sched_getaffinity(0))),
                    help="run --lanes (make demo's default: 2 where there are 2 CPUs)")
    a = ap.parse_args()
    os.environ["PTQ_DEPLOY_CHECKPOINT_CACHE"] = "off"  # a fresh clone's time: compress everything
    exp = load(a.experiment)
    root = a.results_dir or Path(tempfile.mkdtemp(prefix="ptq-ready-")) / exp.name
    run_rc, run_s = _cli("run", a.experiment, "-o", str(root), "--lanes", str(a.lanes))
    report_rc, report_s = _cli("report", str(root))
    steps = [StepTime(model=r.model, cell=r.cell, step=r.step, status=r.status, seconds=round(r.duration_s, 1))
             for r in layout.records(root)]
    by_step: dict[str, float] = defaultdict(float)
    for s in steps:
        by_step[s.step] += s.seconds
    rec = BenchRecord(experiment=exp.model_dump(mode="json"), results_dir=str(root), lanes=a.lanes,
                      run_wall_s=round(run_s, 1),
                      run_exit_code=run_rc, report_wall_s=round(report_s, 1), total_wall_s=round(run_s + report_s, 1),
                      steps=steps, seconds_by_step={k: round(v, 1) for k, v in by_step.items()},
                      provenance=collect())
    path = atomic_write_json(a.out / f"bench_ready_experiment_{exp.name}_{file_stamp()}.json", rec)
    for s in steps:
        print(f"{s.cell:18s} {s.step:9s} {s.status:13s} {s.seconds:8.1f} s")
    print(f"run {run_s:.0f} s (exit {run_rc}), report {report_s:.0f} s (exit {report_rc}); "
          f"by step: {dict(rec.seconds_by_step)} -> {path}")
    sys.exit(run_rc or report_rc)


if __name__ == "__main__":
    main()
