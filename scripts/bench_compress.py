"""Benchmark: time compression of every scheme on the embedded model; writes JSON.

    python scripts/bench_compress.py [--schemes A,B] [--num-samples 32] [--max-seq-len 256] [--out perf_results/]

Each scheme runs through the product path (``ptq_deploy.compress.compress``, compress env as a
subprocess), so the figures include process start, model load, calibration and save. INT4 schemes
use group 64 on the embedded model (hidden size 576 is not a multiple of 128).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress, schemes
from ptq_deploy.provenance import collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--schemes", default=",".join(schemes.names()))
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    args = ap.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="ptq-bench-"))
    try:
        for name in args.schemes.split(","):
            s = schemes.get(name)
            res = compress(CompressConfig(
                model=args.model, scheme=name, output=work / name, group_size=args.group_size if s.group_size else None,
                calibration=CalibrationSettings(num_samples=args.num_samples, max_seq_len=args.max_seq_len)))
            rows.append({"scheme": name, "wall_time_s": round(res.wall_time_s, 2),
                         "calibration_time_s": round(res.calibration_time_s, 2),
                         "peak_rss_gib": round(res.peak_rss_bytes / 2**30, 3),
                         "checkpoint_mib": round(res.checkpoint_bytes / 2**20, 1),
                         "calibration_tokens_max": args.num_samples * args.max_seq_len if s.calibration else 0})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"kind": "compress-benchmark", "schema_version": 1, "model": args.model,
              "settings": {k: str(v) for k, v in vars(args).items()}, "n": 1,
              "note": "one run per scheme: wall time includes process start, load, calibration, save",
              "results": rows, "provenance": collect(compress_env=True).model_dump()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compress-bench_{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
