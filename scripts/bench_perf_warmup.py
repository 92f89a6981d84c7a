"""Benchmark: does a short perf warm-up (2 tokens per request) time the same as a full-length one? Writes JSON.

    python scripts/bench_perf_warmup.py CKPT [CKPT ...] [--experiment smollm2-135m] [--rounds 2] [--out perf_results/]

For each checkpoint, runs the experiment's offline perf settings ``--rounds`` times with each
warm-up (alternating, short first), each run on a freshly loaded engine as in ``ptq-deploy run``,
recording each run's batch-1, batch and throughput figures and its wall time (load included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.perf import offline
from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.runner import run_perf
from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.results import atomic_write_json
from ptq_deploy.stats import Summary
from ptq_deploy.suite.experiment import load
from ptq_deploy.timeutil import file_stamp


class Run(BaseModel):
    checkpoint: str
    round: int
    warmup_output_tokens: int
    wall_s: float
    batch1_e2e: Summary
    batch_e2e: Summary
    throughput_elapsed: Summary


class Record(BaseModel):
    kind: str = "bench-perf-warmup"
    perf: dict
    runs: list[Run]
    provenance: Provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--experiment", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    exp = load(a.experiment)
    short = offline.WARMUP_OUTPUT_TOKENS
    runs = []
    for ckpt in a.checkpoints:
        cfg = PerfConfig(**{**exp.perf.model_dump(), "roofline": False, "serving": False},
                         checkpoint=str(ckpt), engine=exp.models[0].engine, write=False)
        try:
            for r in range(a.rounds):
                for tokens in (short, cfg.output_len):
                    offline.WARMUP_OUTPUT_TOKENS = tokens
                    t0 = time.perf_counter()
                    res = run_perf(cfg)
                    run = Run(checkpoint=str(ckpt), round=r, warmup_output_tokens=tokens,
                              wall_s=time.perf_counter() - t0, batch1_e2e=res.latency.batch1_e2e,
                              batch_e2e=res.latency.batch_e2e, throughput_elapsed=res.throughput.elapsed)
                    runs.append(run)
                    print(f"{ckpt.name} round {r} warm-up {tokens} tokens: {run.wall_s:.1f} s; batch-1 "
                          f"{run.batch1_e2e.mean:.3f} s (n={run.batch1_e2e.n}), batch {run.batch_e2e.mean:.3f} s, "
                          f"throughput pass {run.throughput_elapsed.mean:.3f} s", flush=True)
        finally:
            offline.WARMUP_OUTPUT_TOKENS = short
    path = atomic_write_json(a.out / f"bench_perf_warmup_{file_stamp()}.json",
                             Record(perf=exp.perf.model_dump(), runs=runs, provenance=collect(compress_env=True)))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
