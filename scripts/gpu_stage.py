"""Stage a split bundle for a lent GPU machine, one part per call, and print the calls (docs/gpu.md).

    python3 scripts/gpu_stage.py --build [--resolver-python PATH]   # the bundle into .gpu/bundle (~3 min)
    python3 scripts/gpu_stage.py [--budget-s 540]                     # its parts into .gpu/carry/, the calls

A call carries at most 64 MiB with the working tree, so each part travels in its own call: this links part N
(and the manifest, with the first) into ``.gpu/carry/N/`` (ignored by git; ``carry`` names that folder) and
prints, per call, the folder to carry and the command that copies it to ``/tmp/ptq-bundle`` there (a folder of
the working tree does not survive to the next call; /tmp does while the machine stays warm, ~30 s). The first
call also checks the host against the bundle's target (Python, glibc, torch and every package the bundle left
out) before any more is sent; the last one runs ``scripts/gpu_run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptq_deploy.environments import bundle  # noqa: E402  (stdlib only)

THERE = "/tmp/ptq-bundle"
BUNDLE = ROOT / ".gpu" / "bundle"
# vLLM's optional kernels that neither its engine, its benchmarks nor lm-eval's vllm model import (measured on a
# stand-in host: docs/gpu.md); xgrammar stays, vLLM's engine core imports it
DROP = ("flashinfer-python", "flashinfer-cubin", "nvidia-cutlass-dsl", "quack-kernels", "tilelang")
BUILD = ["-m", "ptq_deploy.environments", "bundle", "--accel", "cuda", "--python", "3.12", "--glibc", "2.35",
         "--torch-present", "2.11.0", "--exclude-from", "bundles/gpu-host-packages.txt",
         *(a for name in DROP for a in ("--drop", name)),
         "--runtime-lock", "requirements/runtime-cuda-vllm0.20-gpuhost.txt",
         "--compress-lock", "requirements/compress-cuda-torch2.11-gpuhost.txt", "--split-mib", "56"]
CHECK = ("python3 -c \"import json,sys; sys.path.insert(0,'.'); from ptq_deploy.environments import bundle; "
         f"bundle.check_host(json.load(open('{THERE}/manifest.json'))['target']); print('host matches the bundle')\"")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, nargs="?", default=BUNDLE, help="a bundle split into parts (default: "
                    f"{BUNDLE.relative_to(ROOT)}, what --build makes)")
    ap.add_argument("--build", action="store_true", help="build the GPU host's bundle into BUNDLE first")
    ap.add_argument("--resolver-python", help="a Python 3.12 with pip, for --build")
    ap.add_argument("--carry", type=Path, default=ROOT / ".gpu" / "carry")
    ap.add_argument("--budget-s", type=int, default=540, help="gpu_run.py's budget in the last call")
    ap.add_argument("--run-args", default="", help="more arguments for gpu_run.py")
    args = ap.parse_args()
    if args.build:
        cmd = [sys.executable, *BUILD, "-o", str(args.bundle)]
        if args.resolver_python:
            cmd += ["--resolver-python", args.resolver_python]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            return 1
    manifest = bundle.load_manifest(args.bundle)
    parts = (manifest.get("parts") or {}).get("files")
    if not parts:
        sys.exit(f"error: {args.bundle} is not split into parts (environments split DIR --mib 56)")
    shutil.rmtree(args.carry, ignore_errors=True)
    calls = []
    for i, part in enumerate(parts):
        folder = args.carry / f"{i:03d}"
        folder.mkdir(parents=True)
        os.link(args.bundle / bundle.PARTS / part["name"], folder / part["name"])
        if i == 0:
            shutil.copy2(args.bundle / bundle.MANIFEST, folder / bundle.MANIFEST)
        copy = f"mkdir -p {THERE}/parts && cp {folder.relative_to(ROOT)}/part-* {THERE}/parts/"
        if i == 0:
            copy += f" && cp {folder.relative_to(ROOT)}/{bundle.MANIFEST} {THERE}/ && nvidia-smi -L && {CHECK}"
        if i == len(parts) - 1:
            copy += (f" && PYTHONUNBUFFERED=1 python3 scripts/gpu_run.py --bundle {THERE} --out $OUT "
                     f"--budget-s {args.budget_s} {args.run_args}".rstrip())
        else:
            copy += f" && ls {THERE}/parts | wc -l"
        calls.append({"carry": [str(folder.relative_to(ROOT))], "command": copy,
                      "bytes": part["size"] + (len(json.dumps(manifest)) if i == 0 else 0)})
    total = sum(p["size"] for p in parts)
    print(f"{len(parts)} calls, {total / bundle.MIB:.0f} MiB of parts; make them back to back (the machine is given "
          f"back ~30 s after a call), the last with timeout_s >= {args.budget_s + 30}:")
    for i, call in enumerate(calls):
        print(json.dumps({"call": i, "carry": call["carry"], "command": call["command"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
