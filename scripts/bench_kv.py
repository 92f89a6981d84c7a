"""Benchmark: the KV part of the ready experiment on the embedded model, timed; writes a JSON record.

    PYTHONPATH=. python scripts/bench_kv.py [--experiment smollm2-135m] [--out perf_results/]

Runs exactly what the suite's ``kv`` step runs for the ready experiment (its ``kv:`` settings and its
quality-only ``kv_cache`` methods, against the unquantized cache) on the embedded model, and records the
wall time, the machine's load average before and after (other processes share this CPU), the full
``KVResult`` and a compact table of every method.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ptq_deploy.kvcache.config import KVConfig
from ptq_deploy.kvcache.runner import run_kv
from ptq_deploy.suite import experiment
from ptq_deploy.timeutil import file_stamp


def table(res) -> list[dict]:
    out = []
    for m in res.methods:
        d = {"method": m.method, "passkey": {f"{c.length}@{c.depth:.0%}": f"{c.correct}/{c.n}" for c in m.passkey},
             "passkey_accuracy": m.passkey_accuracy.mean if m.passkey_accuracy else None,
             "longdoc_ppl": m.longdoc_ppl, "generation_ppl": m.generation_ppl,
             "agreement": m.agreement.mean if m.agreement else None,
             "bytes_per_token": m.bytes_per_token.mean if m.bytes_per_token else None, "bytes_ratio": m.bytes_ratio,
             "logit_max_abs_diff": m.logit_max_abs_diff.mean if m.logit_max_abs_diff else None,
             "kl": m.kl.mean if m.kl else None, "wall_time_s": m.wall_time_s}
        for k in ("passkey_delta", "longdoc_delta", "generation_delta"):
            v = getattr(m, k)
            d[k] = None if v is None else {"delta": v.delta, "ci95": v.ci95, "n": v.n, "verdict": v.verdict}
        out.append(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="smollm2-135m")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    args = ap.parse_args()
    exp = experiment.load(args.experiment)
    cfg = KVConfig(**exp.kv.model_dump(exclude={"schemes", "engine"}), checkpoint=args.model,
                   methods=["none", *exp.kv_quality_only], write=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = run_kv(cfg, progress=lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True))
    wall = time.perf_counter() - t0
    record = {"benchmark": "kv part of the ready experiment", "experiment": exp.name, "wall_time_s": wall,
              "budget_s": 600, "within_budget": wall <= 600, "prefill_s": res.prefill_s,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "methods": table(res), "findings": [f.model_dump() for f in res.findings],
              "result": json.loads(res.model_dump_json())}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_kv_{file_stamp()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("wall_time_s", "within_budget", "prefill_s", "load_average_before",
                                             "load_average_after")}, indent=1))
    for row in record["methods"]:
        print(json.dumps({k: v for k, v in row.items() if k != "passkey"}), row["passkey"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
