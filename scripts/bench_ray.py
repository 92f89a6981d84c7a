"""Benchmark: one tiny experiment with ``--executor local`` and with ``--executor ray`` (a local 2-CPU cluster); writes JSON.

    python scripts/bench_ray.py [--n 1] [--ray-cpus 2] [--out perf_results/]

Builds the tiny random Llama (``ptq_deploy.tiny``), writes a two-cell experiment (BF16, FP8-W8A8:
compress, inspect, perf, eval), and runs it with the CLI a user runs, into a fresh results dir each
time, alternating the executors ``n`` times. Records each run's wall time (the command, Ray's start
included), the span from its first step's start to its last step's end, the sum of its steps'
durations, the load average before it (this machine may be shared), settings and provenance.
Checkpoint reuse (``suite.reuse``) is off: every run compresses its cells.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.results import atomic_write_json
from ptq_deploy.suite import layout
from ptq_deploy.timeutil import file_stamp
from ptq_deploy.tiny import build_tiny_llama

PERF = {"num_prompts": 4, "input_len": 16, "output_len": 8, "iterations": 1, "warmup": 0, "serving": False,
        "latency_prompts": 2}


class Run(BaseModel):
    executor: str
    exit_code: int
    wall_s: float  # the command, process and Ray start included
    steps_span_s: float  # first step's start to last step's end (step records, 1 s resolution)
    steps_sum_s: float  # the steps' durations added up: the serial work
    load_avg_1min_before: float


class BenchRecord(BaseModel):
    kind: str = "bench-ray"
    experiment: dict
    n: int
    ray_cpus: int
    env: dict[str, str]
    runs: list[Run]
    wall_s: dict[str, dict[str, float]]  # executor -> median / min / max over n
    speedup_median: float  # local / ray, median wall times
    provenance: Provenance


def _span(root: Path) -> tuple[float, float]:
    recs = layout.records(root)
    starts = [dt.datetime.fromisoformat(r.started_at).timestamp() for r in recs]
    ends = [s + r.wall_time_s for s, r in zip(starts, recs)]
    return max(ends) - min(starts), sum(r.wall_time_s for r in recs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1, help="runs per executor")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    os.environ["PTQ_DEPLOY_CHECKPOINT_CACHE"] = "off"  # every run compresses (no reuse of the other run's checkpoints)
    work = Path(tempfile.mkdtemp(prefix="ptq-bench-ray-"))
    model = build_tiny_llama(work / "tiny-llama")
    exp = {"name": "tiny-ray-bench", "schemes": ["BF16", "FP8-W8A8"], "steps": ["compress", "inspect", "perf", "eval"],
           "models": [{"name": "tiny", "source": str(model), "engine": {"max_model_len": 256}}],
           "compress": {"num_samples": 4, "max_seq_len": 32}, "perf": PERF,
           "eval": {"tasks": ["austen_ppl"], "limit": 4}}
    exp_file = work / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(exp, sort_keys=False))
    runs: list[Run] = []
    for i in range(a.n):
        for executor in ("local", "ray"):
            root = work / f"{executor}-{i}"
            extra = ["--ray-cpus", str(a.ray_cpus)] if executor == "ray" else []
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            rc = subprocess.run([sys.executable, "-m", "ptq_deploy.cli", "run", str(exp_file), "-o", str(root),
                                 "--executor", executor, *extra]).returncode
            wall = time.perf_counter() - t0
            span, total = _span(root)
            runs.append(Run(executor=executor, exit_code=rc, wall_s=round(wall, 1), steps_span_s=round(span, 1),
                            steps_sum_s=round(total, 1), load_avg_1min_before=round(load, 2)))
            print(f"{executor:5s} run {i}: {wall:.0f} s wall, steps {span:.0f} s span / {total:.0f} s summed (exit {rc})")
    walls = {e: [r.wall_s for r in runs if r.executor == e] for e in ("local", "ray")}
    summary = {e: {"median": statistics.median(w), "min": min(w), "max": max(w)} for e, w in walls.items()}
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "VLLM_", "PTQ_DEPLOY_"))}
    rec = BenchRecord(experiment=exp, n=a.n, ray_cpus=a.ray_cpus, env=env, runs=runs, wall_s=summary,
                      speedup_median=round(summary["local"]["median"] / summary["ray"]["median"], 2),
                      provenance=collect(compress_env=True))
    path = atomic_write_json(a.out / f"bench_ray_{file_stamp()}.json", rec)
    print(f"local {summary['local']['median']:.0f} s, ray {summary['ray']['median']:.0f} s (median of {a.n}): "
          f"x{rec.speedup_median} -> {path}")
    sys.exit(max(r.exit_code for r in runs))


if __name__ == "__main__":
    main()
