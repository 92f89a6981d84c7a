"""GPU check of the product where vLLM is absent: the hardware and NVML readings, the memory bandwidth (NVML's
spec and a measured copy), then each scheme compressed through the product path and scored with lm-eval's HF
backend against the BF16 baseline (paired recovery, as `ptq-deploy eval --backend hf --baseline` gives).
``scripts/compare_conclusions.py RECORD RESULTS_DIR`` then compares its conclusions with a run's elsewhere.

    python scripts/gpu_check.py [--model default|tiny|PATH] [--schemes A,B] [--tasks austen_ppl]
                                [--num-samples 64] [--max-seq-len 512] [--out DIR]

Needs torch (CUDA for a GPU check; it runs on a CPU too), llmcompressor 0.14 and lm-eval 0.4.13 in this
interpreter. The record (``gpu_check_<model>_<time>.json`` in --out) is rewritten after every step, so a
run cut short keeps what it measured; a step that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress, schemes
from ptq_deploy.eval import EvalConfig
from ptq_deploy.eval.runner import run_eval
from ptq_deploy.hardware import detect, nvml
from ptq_deploy.hardware.support import kv_cache_support, scheme_support
from ptq_deploy.models import resolve
from ptq_deploy.perf.roofline import peaks
from ptq_deploy.provenance import collect
from ptq_deploy.results.io import atomic_write_text
from ptq_deploy.timeutil import file_stamp
from ptq_deploy.tiny import build_tiny_llama

BASELINE = "BF16"
DEFAULT_SCHEMES = "FP8-W8A8,INT8-W8A8,INT8-W8A16,INT8-W8A16-RTN,INT4-W4A16,INT4-W4A16-AWQ,INT4-W4A16-RTN"


def _error(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1][:500]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default (the embedded SmolLM2), tiny, or a dir/.gguf")
    ap.add_argument("--schemes", default=DEFAULT_SCHEMES)
    ap.add_argument("--tasks", default="austen_ppl", help="lm-eval tasks ('' to compress only)")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64, help="INT4 group (the embedded model's hidden size is 576)")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    args = ap.parse_args()

    hw = detect()
    record_path = args.out / f"gpu_check_{Path(args.model).stem}_{file_stamp()}.json"
    calib = CalibrationSettings(num_samples=args.num_samples, max_seq_len=args.max_seq_len)
    record: dict = {"kind": "gpu-check", "schema_version": 1, "model": args.model,
                    "settings": {k: str(v) for k, v in vars(args).items()}, "calibration": calib.model_dump(),
                    "hardware_summary": hw.summary(), "nvml_devices": [d.model_dump() for d in nvml.devices()],
                    "support": {n: scheme_support(s, hw).model_dump() for n, s in schemes.registry().items()},
                    "kv_fp8": kv_cache_support("fp8", hw).model_dump(), "schemes": {},
                    "provenance": collect(hw).model_dump(mode="json")}

    def save(msg: str) -> None:  # the record so far, replaced whole (a reader never sees half of it)
        atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n", force=True)
        print(f"[gpu-check] {msg}", flush=True)

    spec, measured = peaks(hw)
    record["bandwidth"] = {"peak": spec.model_dump(), "second": measured.model_dump() if measured else None}
    save(f"bandwidth: {spec.source} {spec.gbps:.0f} GB/s"
         + (f"; {measured.source} {measured.gbps:.0f} GB/s" if measured else ""))

    with tempfile.TemporaryDirectory(prefix="ptq-gpu-check-") as tmp:
        work = Path(tmp)
        model = str(build_tiny_llama(work / "tiny")) if args.model == "tiny" else args.model
        resolve(model)  # a GGUF is converted here, once, outside every timed (and energy-metered) compression
        tasks = [t for t in args.tasks.split(",") if t]
        baseline_json: str | None = None
        for name in [BASELINE, *[s for s in args.schemes.split(",") if s and s != BASELINE]]:
            row: dict = record["schemes"].setdefault(name, {})
            out = work / name
            try:
                group = args.group_size if schemes.get(name).group_size else None
                energy0 = nvml.energy_mj()
                r = compress(CompressConfig(model=model, scheme=name, output=out, group_size=group,
                                            calibration=calib))
                energy1 = nvml.energy_mj()
                qc = json.loads((out / "config.json").read_text()).get("quantization_config") or {}
                row["compress"] = {"ok": True, "format": qc.get("format"), "wall_time_s": r.wall_time_s,
                                   "calibration_time_s": r.calibration_time_s, "peak_gpu_bytes": r.peak_gpu_bytes,
                                   "peak_rss_bytes": r.peak_rss_bytes, "checkpoint_bytes": r.checkpoint_bytes,
                                   "gpu_energy_j": ({k: (energy1[k] - energy0[k]) / 1e3 for k in energy1}
                                                    if energy0 and energy1 else None),
                                   "gpus_in_provenance": [g.name for g in r.provenance.hardware.gpus]}
                save(f"{name}: compressed in {r.wall_time_s:.1f} s")
            except Exception as e:  # record, go on with the next scheme
                row["compress"] = {"ok": False, "error": _error(e)}
                save(f"{name}: compress failed: {row['compress']['error']}")
                continue
            if not tasks:
                continue
            try:
                t0 = time.perf_counter()
                res = run_eval(EvalConfig(checkpoint=str(out), backend="hf", tasks=tasks, baseline=baseline_json,
                                          output_dir=work / "eval"))
                row["eval"] = {"ok": True, "wall_time_s": time.perf_counter() - t0,
                               "settings": res.settings.model_dump(mode="json"),
                               "tasks": {k: v.model_dump(mode="json") for k, v in res.tasks.items()},
                               "recovery": [x.model_dump(mode="json") for x in res.recovery or []]}
                if name == BASELINE:
                    baseline_json = res.path
                verdicts = ", ".join(f"{x.metric} {x.recovery:.2%} {x.verdict}" for x in res.recovery or []
                                     if x.recovery is not None)
                save(f"{name}: scored in {row['eval']['wall_time_s']:.1f} s {verdicts}")
            except Exception as e:
                row["eval"] = {"ok": False, "error": _error(e)}
                save(f"{name}: eval failed: {row['eval']['error']}")
    save(f"wrote {record_path}")


if __name__ == "__main__":
    main()
