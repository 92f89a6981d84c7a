"""Benchmark: what one Linear of the embedded model costs on this CPU, per dtype, in torch alone.

    python scripts/bench_cpu_matmul.py [--rows 1,6,48] [--repeats 5] [--out perf_results/]

vLLM's CPU build runs FP8-W8A8 through ``torch._scaled_mm`` (``ChannelWiseTorchFP8ScaledMMLinearKernel``,
emulated). Whether torch has a fast FP8 path depends on the CPU, so the cost of an FP8 matmul against the
bf16 and fp32 ones of the same shape says what an FP8 cell will cost here before a run finds out. Shape: the
embedded SmolLM2-135M's MLP up projection (576 -> 1536); ``rows``: tokens in the batch (1: a decode step).
Each figure: the median of ``repeats`` timed calls after one warm-up, with min and max. The record carries
the CPU, torch's threads and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ptq_deploy.provenance import collect
from ptq_deploy.results.io import atomic_write_text
from ptq_deploy.timeutil import file_stamp

IN, OUT = 576, 1536


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "max_ms": round(max(times), 4), "n": repeats}


def _cases(rows: int):
    torch.manual_seed(0)
    x, w = torch.randn(rows, IN), torch.randn(OUT, IN)
    one = torch.ones(1, dtype=torch.float32)
    a8, b8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn).t()
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    yield "fp8_e4m3 (torch._scaled_mm, as vLLM's CPU FP8 kernel)", lambda: torch._scaled_mm(
        a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float32)
    yield "bfloat16 (F.linear)", lambda: torch.nn.functional.linear(xb, wb)
    yield "float32 (F.linear)", lambda: torch.nn.functional.linear(x, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,6,48")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    args = ap.parse_args()
    load_before = os.getloadavg()
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for name, fn in _cases(rows):
            results.append({"dtype": name, "rows": rows, "shape": [IN, OUT], **_timed(fn, args.repeats)})
            print(json.dumps(results[-1]), flush=True)
    by = {(r["dtype"].split()[0], r["rows"]): r["median_ms"] for r in results}
    ratios = {f"fp8_vs_bf16_rows{rows}": round(by[("fp8_e4m3", rows)] / by[("bfloat16", rows)], 1)
              for _, rows in by if ("bfloat16", rows) in by}
    prov = collect(compress_env=True)
    record = {"kind": "cpu-matmul-benchmark", "schema_version": 1, "question": __doc__.splitlines()[0],
              "settings": {"rows": args.rows, "repeats": args.repeats, "shape": [IN, OUT],
                           "torch_threads": torch.get_num_threads()},
              "cpu": prov.hardware.cpu.model_dump(), "results": results, "fp8_slowdown": ratios,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "provenance": prov.model_dump()}
    path = args.out / f"bench_cpu_matmul_{file_stamp()}.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(f"fp8 / bf16 time: {ratios}\nwrote {path}")


if __name__ == "__main__":
    main()
