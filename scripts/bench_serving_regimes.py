"""Benchmark: serving regimes on the embedded model (``smollm2-135m-serving``); writes JSON.

    python scripts/bench_serving_regimes.py [--experiment smollm2-135m-serving] [--results-dir DIR]
        [--keep tests/data/results-regimes] [--out perf_results/]
    python scripts/bench_serving_regimes.py --decide tests/data/results-regimes --min-recovery 0.75

Runs ``ptq-deploy run EXPERIMENT`` (compressed checkpoints are reused by content where the ready experiment
made them) and builds its report, then records, per model: every scheme's load curve per workload shape
(each level's output tok/s, TTFT / TPOT p50 and p99, requests, and why the sweep stopped), the crossover
loads against the baseline, and the winner of each regime (interactive, throughput within the
experiment's latency targets, capacity) with the sentence the report prints, plus the same regimes under
each extra ``--slo`` set (how the targets move the throughput winner). ``--keep DIR`` copies the results
dir without checkpoints and logs (the step records and result JSONs the report reads). ``--decide DIR``
records the regimes of an existing results dir without running anything (e.g. under another
``--min-recovery``, so that the quantized schemes are candidates too).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from ptq_deploy.perf.config import parse_slos
from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.report import build_report
from ptq_deploy.report.regimes import Regimes
from ptq_deploy.results import atomic_write_json
from ptq_deploy.suite.experiment import load
from ptq_deploy.timeutil import file_stamp


class Variant(BaseModel):
    slo_ms: dict[str, float]
    winners: dict[str, str | None]  # "regime[/shape]" -> winning cell
    texts: list[str]


class ModelRegimes(BaseModel):
    model: str
    regimes: Regimes  # curves, crossovers, results under the experiment's targets
    variants: list[Variant] = []  # the same results under other targets


class BenchRecord(BaseModel):
    kind: str = "bench-serving-regimes"
    experiment: dict
    results_dir: str
    run_wall_s: float | None  # None with --decide (nothing ran)
    run_exit_code: int
    min_recovery: float | None = None  # the rule's minimum recovery when given (else the experiment's)
    models: list[ModelRegimes]
    provenance: Provenance


def winners(rg: Regimes) -> dict[str, str | None]:
    return {f"{r.regime}/{r.shape}" if r.shape else r.regime: r.winner for r in rg.results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smollm2-135m-serving")
    ap.add_argument("--results-dir", type=Path, default=None, help="default: a fresh temporary directory")
    ap.add_argument("--keep", type=Path, default=None, help="copy the results (no checkpoints, no logs) here")
    ap.add_argument("--slo", action="append", default=None, metavar="NAME:MS[,NAME:MS]",
                    help="another set of latency targets to decide the regimes under (repeatable); default: "
                         "tpot:60 and ttft:1000,tpot:300")
    ap.add_argument("--decide", type=Path, default=None, metavar="DIR", help="decide the regimes of DIR; run nothing")
    ap.add_argument("--min-recovery", type=float, default=None, help="the quality rule's minimum recovery (0.75 = 75%%)")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    if a.decide is not None:
        root, rc, run_s = a.decide, 0, None
        experiment = yaml.safe_load((root / "experiment.yaml").read_text())  # as run (with its version)
    else:
        exp = load(a.experiment)
        experiment = exp.model_dump(mode="json")
        root = a.results_dir or Path(tempfile.mkdtemp(prefix="ptq-serving-")) / exp.name
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", "ptq_deploy.cli", "run", a.experiment, "-o", str(root)]).returncode
        run_s = time.perf_counter() - t0
    rep = build_report(root, min_recovery=a.min_recovery)
    models = []
    for lb in rep.leaderboards:
        if lb.regimes is None:
            continue
        mr = ModelRegimes(model=lb.model, regimes=lb.regimes)
        for spec in a.slo or ["tpot:60", "ttft:1000,tpot:300"]:
            slo = parse_slos(spec.split(","), option="--slo")
            other = next(x for x in build_report(root, min_recovery=a.min_recovery, slo=slo).leaderboards
                         if x.model == lb.model).regimes
            mr.variants.append(Variant(slo_ms=other.slo_ms, winners=winners(other),
                                       texts=[f"{r.regime}{f' ({r.shape})' if r.shape else ''}: {r.text}"
                                              for r in other.results]))
        models.append(mr)
    rec = BenchRecord(experiment=experiment, results_dir=str(root.resolve()),
                      run_wall_s=round(run_s, 1) if run_s is not None else None, run_exit_code=rc,
                      min_recovery=a.min_recovery, models=models,
                      provenance=collect(compress_env=True))
    path = atomic_write_json(a.out / f"bench_serving_regimes_{experiment['name']}_{file_stamp()}.json", rec)
    if a.keep is not None:
        if a.keep.exists():
            shutil.rmtree(a.keep)
        shutil.copytree(root, a.keep, ignore=shutil.ignore_patterns("checkpoints", "logs", "report"))
    for m in models:
        for r in m.regimes.results:
            print(f"{m.model} {r.regime}{f' ({r.shape})' if r.shape else ''}: {r.text}")
        for x in m.regimes.crossovers:
            print(f"{m.model} {x}")
        for v in m.variants:
            print(f"{m.model} under {v.slo_ms}: {v.winners}")
    print(f"run: {f'{run_s:.0f} s' if run_s is not None else 'none (--decide)'} (exit {rc}) -> {path}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
