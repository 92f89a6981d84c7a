"""Benchmark: how long the test suite takes, as a contributor runs it; writes JSON.

    python scripts/bench_test_suite.py [--out perf_results/] [--tier fast] [--tier full]

Clones this checkout's HEAD (it must be clean: the record names the commit it timed) into a temporary
directory and times, there, each asked-for tier: ``full`` is ``make test`` itself (the setup check, which also
links the environments to the clone, then every test in one pytest-xdist worker per core), ``fast`` is
``pytest -m "not integration"`` (no engine, compression or server) in the runtime environment. The environments and the probe are the ones ``make setup``
keeps under ``~/.cache/ptq-deploy``: build them first, or the first tier's time includes building them. The
record carries each tier's wall time, exit code and pytest's summary line.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.environments import resolve_python
from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.results import atomic_write_json
from ptq_deploy.timeutil import file_stamp

REPO = Path(__file__).resolve().parent.parent
TIERS = {"full": "make test", "fast": "{python} -m pytest -q -n {workers} --dist loadfile --no-loadscope-reorder -m 'not integration'"}


class TierTime(BaseModel):
    tier: str
    command: str
    wall_s: float
    exit_code: int
    summary: str | None  # pytest's last line: "N passed, M skipped in S s"
    failures: list[str] = []  # pytest's "FAILED ..." and "ERROR ..." lines


class BenchRecord(BaseModel):
    kind: str = "bench-test-suite"
    commit: str
    workers: int
    tiers: list[TierTime]
    provenance: Provenance


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "perf_results")
    ap.add_argument("--tier", action="append", choices=list(TIERS), help="default: full, then fast")
    args = ap.parse_args()
    if subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip():
        sys.exit("error: the checkout has uncommitted changes; commit them, the record names the commit it timed")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    workers = min(os.cpu_count() or 1, 4)  # as the Makefile's TEST_WORKERS
    python = resolve_python("runtime")
    provenance = collect(compress_env=True)  # this checkout as it is now: clean, at the commit timed
    tiers = []
    with tempfile.TemporaryDirectory(prefix="ptq-bench-tests-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        for tier in args.tier or list(TIERS):
            cmd = TIERS[tier].format(python=python, workers=workers)
            print(f"[bench] {tier}: {cmd}", flush=True)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, shell=True, cwd=clone, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            lines = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", p.stdout, re.M)
            tiers.append(TierTime(tier=tier, command=cmd, wall_s=round(wall, 1), exit_code=p.returncode,
                                  summary=lines[-1] if lines else None,
                                  failures=re.findall(r"^(?:FAILED|ERROR) .*$", p.stdout, re.M)))
            if p.returncode:  # the whole output, for the failures' tracebacks (not part of the record)
                log = Path(tempfile.gettempdir()) / f"bench_test_suite_{tier}_{file_stamp()}.log"
                log.write_text(p.stdout + p.stderr)
                print(f"[bench] {tier}: output in {log}", flush=True)
            print(f"[bench] {tier}: {wall:.0f} s, exit {p.returncode}, {tiers[-1].summary}", flush=True)
        # `make setup` in the clone linked the environments to it: link them back to this checkout
        subprocess.run([sys.executable, "-m", "ptq_deploy.environments", "setup"], cwd=REPO, check=True,
                       capture_output=True)
    rec = BenchRecord(commit=commit, workers=workers, tiers=tiers, provenance=provenance)
    path = args.out / f"bench_test_suite_{file_stamp()}.json"
    atomic_write_json(path, rec)
    print(f"wrote {path}")
    return 0 if all(t.exit_code == 0 for t in tiers) else 1


if __name__ == "__main__":
    sys.exit(main())
