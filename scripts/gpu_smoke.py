"""GPU smoke check of the compress side: device detection (pynvml), the support table, and real
llmcompressor runs on CUDA through the product path, on a tiny random Llama.

    python scripts/gpu_smoke.py [--schemes FP8-W8A8,INT8-W8A8,INT4-W4A16,INT4-W4A16-AWQ] [--out DIR]

Needs torch with CUDA, transformers, llmcompressor 0.14 (the compress environment). Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ptq_deploy import schemes
from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress
from ptq_deploy.hardware import detect
from ptq_deploy.support import kv_cache_support, scheme_support
from ptq_deploy.tiny import build_tiny_llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="FP8-W8A8,INT8-W8A8,INT4-W4A16,INT4-W4A16-AWQ")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    hw = detect()
    report = {"hardware": hw.model_dump(), "summary": hw.summary(),
              "support": {n: scheme_support(s, hw).model_dump() for n, s in schemes.registry().items()},
              "kv_fp8": kv_cache_support("fp8", hw).model_dump(), "compress": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(Path(tmp) / "tiny")
        for name in args.schemes.split(","):
            group = 64 if schemes.get(name).group_size else None
            try:
                r = compress(CompressConfig(model=str(model), scheme=name, output=Path(tmp) / name, group_size=group,
                                            calibration=CalibrationSettings(num_samples=16, max_seq_len=128)))
                qc = json.loads((Path(tmp) / name / "config.json").read_text())["quantization_config"]
                report["compress"][name] = {"ok": True, "format": qc["format"], "wall_time_s": r.wall_time_s,
                                            "peak_gpu_bytes": r.peak_gpu_bytes, "peak_rss_bytes": r.peak_rss_bytes,
                                            "gpus_in_provenance": [g.name for g in r.provenance.hardware.gpus]}
            except Exception as e:  # report, don't stop
                report["compress"][name] = {"ok": False, "error": str(e)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_smoke.json").write_text(text)


if __name__ == "__main__":
    main()
