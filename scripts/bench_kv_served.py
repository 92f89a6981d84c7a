"""Benchmark: vLLM's fp8 KV cache on the embedded model, calibrated and not, measured in the engine; writes JSON.

    python scripts/bench_kv_served.py [--out perf_results/] [--lengths 1024,2048,4096,8128] [--samples 4]

Compresses the embedded SmolLM2-135M twice through the product (BF16, and BF16 with llmcompressor's
calibrated FP8 KV scales, ``compress --kv-cache fp8``), then runs ``ptq-deploy kv``'s library path with the
vLLM rows ``fp8`` (the calibrated scales: ``--scales-from``) and ``fp8-uncalibrated`` (vLLM's default
scales) against vLLM's ``auto`` cache: passkey at every length (5 depths x ``--samples``), cached
long-document and generation perplexity on the bundled chapters, each with its paired 95% interval, the
proof (logprob differences on the same tokens), capacity, bytes per token and decode time by context.
8128 is the model's 8,192 positions less room for the answer. The checkout must be clean: the record's
provenance (taken at the start: commit, both environments' package versions, hardware, load average) names
the code that wrote it; the load average after is recorded too (other processes share the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress
from ptq_deploy.kvcache.config import KVConfig, ServedSettings
from ptq_deploy.kvcache.longctx import PasskeySpec
from ptq_deploy.kvcache.runner import run_kv
from ptq_deploy.provenance import collect
from ptq_deploy.timeutil import file_stamp

REPO = Path(__file__).resolve().parent.parent


def summary(res) -> list[dict]:
    """One compact row per method: what the closing notes and docs quote."""
    rows = []
    for m in res.methods:
        d = {"method": m.method, "backend": m.backend,
             "passkey_accuracy": m.passkey_accuracy.mean if m.passkey_accuracy else None,
             "passkey_n": m.passkey_accuracy.n if m.passkey_accuracy else 0,
             "passkey_by_length": {}, "longdoc_ppl": m.longdoc_ppl, "generation_ppl": m.generation_ppl,
             "agreement": m.agreement.mean if m.agreement else None, "bytes_ratio": m.bytes_ratio,
             "proof_logprob_max_abs_diff": m.logit_max_abs_diff.max if m.logit_max_abs_diff else None,
             "proof_logprob_mean_abs_diff": m.logit_mean_abs_diff.mean if m.logit_mean_abs_diff else None,
             "identical_samples": m.identical_samples, "wall_time_s": m.wall_time_s}
        for c in m.passkey:
            n, k = d["passkey_by_length"].get(c.length, (0, 0))
            d["passkey_by_length"][c.length] = (n + c.n, k + c.correct)
        d["passkey_by_length"] = {str(k): f"{c}/{n}" for k, (n, c) in d["passkey_by_length"].items()}
        for k in ("passkey_delta", "longdoc_delta", "generation_delta"):
            v = getattr(m, k)
            d[k] = None if v is None else {"delta": v.delta, "ci95": v.ci95, "n": v.n, "verdict": v.verdict}
        if m.cost:
            c = m.cost
            d["cost"] = {"kv_cache_dtype": c.kv_cache_dtype, "attention_backend": c.attention_backend,
                         "capacity_tokens": c.capacity_tokens, "bytes_per_token": c.bytes_per_token,
                         "concurrent_sequences_at": c.concurrent_sequences_at,
                         "decode_ms_per_token_median": {k: v.median for k, v in c.decode_ms_per_token.items()},
                         "decode_slope_ms_per_1k": c.decode_slope_ms_per_1k,
                         "long_context_tokens_per_s_median": c.long_context_tokens_per_s.median
                         if c.long_context_tokens_per_s else None}
        rows.append(d)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "perf_results")
    ap.add_argument("--lengths", default="1024,2048,4096,8128")
    ap.add_argument("--samples", type=int, default=4, help="per depth (5 depths): 20 per length by default")
    ap.add_argument("--documents", type=int, default=4)
    args = ap.parse_args()
    if subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip():
        sys.exit("error: the checkout has uncommitted changes; commit them, the record names the commit it measured")
    provenance = collect(compress_env=True)  # at the start: the clean commit, both environments' versions
    t0 = time.perf_counter()

    def say(m: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-kv-served-") as tmp:
        plain, scaled = Path(tmp) / "bf16", Path(tmp) / "bf16-kv-fp8"
        say("compress: BF16, and BF16 with calibrated FP8 KV scales (llmcompressor)")
        calib = CalibrationSettings(num_samples=64, max_seq_len=512)
        compress(CompressConfig(model="default", scheme="BF16", output=plain))
        scaled_result = compress(CompressConfig(model="default", scheme="BF16", output=scaled, kv_cache="fp8",
                                                calibration=calib))
        cfg = KVConfig(checkpoint=str(plain), methods=["fp8", "fp8-uncalibrated"], scales_from=str(scaled),
                       passkey=PasskeySpec(lengths=[int(x) for x in args.lengths.split(",")], samples=args.samples),
                       documents=args.documents, scored_tokens=256, generate_tokens=32,
                       served=ServedSettings(), write=False)
        res = run_kv(cfg, progress=say)
    record = {"benchmark": "vLLM fp8 KV cache in the engine, calibrated and not, vs auto (embedded model)",
              "wall_time_s": time.perf_counter() - t0, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "cpu_count": os.cpu_count(),
              "kv_calibration": {"num_samples": calib.num_samples, "max_seq_len": calib.max_seq_len,
                                 "calibration_time_s": scaled_result.calibration_time_s},
              "provenance": provenance.model_dump(mode="json"),
              "methods": summary(res), "findings": [f.model_dump() for f in res.findings],
              "result": json.loads(res.model_dump_json())}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_kv_served_{file_stamp()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for row in record["methods"]:
        print(json.dumps({k: v for k, v in row.items() if k not in ("cost",)}))
        if "cost" in row:
            print("   cost:", json.dumps(row["cost"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
