"""Do two runs of an experiment reach the same conclusions? (The ready experiment against a full-size run.)

    python scripts/compare_conclusions.py FAST_RESULTS_DIR FULL_RESULTS_DIR [--out perf_results/]
    python scripts/compare_conclusions.py GPU_CHECK_RECORD.json FULL_RESULTS_DIR   (another host's checkpoints)

Reads each dir's ``report/report.json`` (``ptq-deploy report`` writes it) and compares, scheme by
scheme and task by task, the verdict against the baseline (regressed / improved / not
distinguishable, from the paired interval) and the outcome against the recovery constraint (meets /
fails / inconclusive), with n and the interval of each side; then, where both dirs hold an eval of
the same cell, the paired difference between the two runs' checkpoints on the shared documents
(did the cheaper calibration change the checkpoint's quality measurably?). A task only the full run
scored is listed with its verdicts: dropping it keeps the conclusions when it tells no scheme apart
from the baseline, and per scheme the record says whether each run finds it distinguishable from the
baseline on any task. Writes the JSON record.

Either side may instead be a ``scripts/gpu_check.py`` record: its checkpoints, compressed and scored on
another host, are then judged as ``report`` judges a results dir (each task's primary metric, its
recovery interval, the default constraint), and no checkpoint is compared across the two (they stay on
that host).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.eval.recovery import compare
from ptq_deploy.eval.result import EvalResult, Recovery, TaskResult
from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.report.noninferiority import outcome
from ptq_deploy.report.quality import recovery_interval
from ptq_deploy.report.row import TaskScore, sig
from ptq_deploy.report.settings import ReportSettings
from ptq_deploy.results import atomic_write_json
from ptq_deploy.suite import layout
from ptq_deploy.timeutil import file_stamp


class Conclusion(BaseModel):
    scheme: str
    task: str
    n: tuple[int | None, int | None]
    recovery_ci_pct: tuple[list[float | None], list[float | None]]
    verdict: tuple[str | None, str | None]
    outcome: tuple[str | None, str | None]
    same: bool


class RunVsRun(BaseModel):
    scheme: str
    task: str
    metric: str
    values: tuple[float, float]
    delta_ci95: list[float] | None
    n_paired: int
    verdict: str


class OneSided(BaseModel):
    scheme: str
    task: str
    run: str  # "fast" or "full": the run that scored it
    n: int | None
    recovery_ci_pct: list[float | None]
    verdict: str | None
    outcome: str | None


class Distinguishable(BaseModel):
    scheme: str
    fast: bool  # regressed or improved on at least one task
    full: bool
    same: bool


DISTINCT = ("regressed", "improved")


class Record(BaseModel):
    kind: str = "compare-conclusions"
    dirs: tuple[str, str]
    conclusions: list[Conclusion]
    only_one_run: list[OneSided] = []
    distinguishable: list[Distinguishable] = []
    all_same: bool  # shared (scheme, task) conclusions equal and each scheme's distinguishability equal
    checkpoints: list[RunVsRun]
    provenance: Provenance


def _gpu_check_rows(record: dict) -> dict[tuple[str, str], dict]:
    """A ``gpu_check`` record's schemes as report rows: each task's primary metric, judged as ``report`` does."""
    settings, rows = ReportSettings(), {}
    for scheme, row in record["schemes"].items():
        ev = row.get("eval") or {}
        recs = [Recovery.model_validate(x) for x in ev.get("recovery") or []]
        for task, t in (ev.get("tasks") or {}).items():
            tr = TaskResult.model_validate(t)
            metric = tr.primary_metric()
            rec = next((x for x in recs if x.task == task and x.metric == metric), None)
            if rec is None:  # the baseline
                rows[(scheme, task)] = {"verdict": "baseline", "outcome": "baseline", "recovery_low_pct": 100.0,
                                        "recovery_high_pct": 100.0,
                                        "n": len(tr.per_sample.doc_ids) if tr.per_sample else None}
                continue
            lo, hi = recovery_interval(rec)
            ts = TaskScore(metric=metric, value=rec.quantized, n=rec.n_paired, recovery_pct=sig(rec.recovery * 100),
                           recovery_low_pct=lo, recovery_high_pct=hi, verdict=rec.verdict)
            rows[(scheme, task)] = {**ts.model_dump(), "outcome": outcome(ts, settings.threshold_pct(task))}
    return rows


def _rows(root: Path) -> dict[tuple[str, str], dict]:
    if root.is_file():
        return _gpu_check_rows(json.loads(root.read_text()))
    rep = json.loads((root / "report" / "report.json").read_text())
    return {(r["scheme"], task): t for lb in rep["leaderboards"] for r in lb["rows"]
            for task, t in (r.get("tasks") or {}).items()}


def _evals(root: Path) -> dict[str, EvalResult]:
    if root.is_file():  # a gpu_check record: its checkpoints stayed on its host
        return {}
    return {r.cell: EvalResult.model_validate_json((root / r.result).read_text())
            for r in layout.records(root) if r.step == "eval" and r.status == "ok" and r.result}


def _same_limit(full: EvalResult, fast: EvalResult) -> EvalResult:
    """``full`` with ``fast``'s eval limit when the limit chose the same documents of every shared task (a
    limit at or above a task's size: the paired comparison is then one of like with like); else unchanged,
    and ``compare`` refuses the different settings."""
    shared = set(full.tasks) & set(fast.tasks)
    docs = [(full.tasks[t].per_sample, fast.tasks[t].per_sample) for t in shared]
    if full.settings.limit != fast.settings.limit and docs and all(
            a is not None and b is not None and a.doc_ids == b.doc_ids for a, b in docs):
        return full.model_copy(update={"settings": full.settings.model_copy(update={"limit": fast.settings.limit})})
    return full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fast", type=Path)
    ap.add_argument("full", type=Path)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    fast, full = _rows(a.fast), _rows(a.full)
    out = []
    for key in sorted(set(fast) & set(full)):
        f, g = fast[key], full[key]
        same = (f.get("verdict"), f.get("outcome")) == (g.get("verdict"), g.get("outcome"))
        out.append(Conclusion(scheme=key[0], task=key[1], n=(f.get("n"), g.get("n")),
                              recovery_ci_pct=([f.get("recovery_low_pct"), f.get("recovery_high_pct")],
                                               [g.get("recovery_low_pct"), g.get("recovery_high_pct")]),
                              verdict=(f.get("verdict"), g.get("verdict")), outcome=(f.get("outcome"), g.get("outcome")),
                              same=same))
    ea, eb = _evals(a.fast), _evals(a.full)
    ckpts = []
    for cell in sorted(set(ea) & set(eb)):
        for rec in compare(_same_limit(eb[cell], ea[cell]), ea[cell]):  # the full run's checkpoint as the reference
            ckpts.append(RunVsRun(scheme=cell, task=rec.task, metric=rec.metric, values=(rec.quantized, rec.baseline),
                                  delta_ci95=list(rec.ci95) if rec.ci95 else None, n_paired=rec.n_paired or 0,
                                  verdict=rec.verdict))
    one = [OneSided(scheme=k[0], task=k[1], run=run, n=rows[k].get("n"),
                    recovery_ci_pct=[rows[k].get("recovery_low_pct"), rows[k].get("recovery_high_pct")],
                    verdict=rows[k].get("verdict"), outcome=rows[k].get("outcome"))
           for run, rows, other in (("fast", fast, full), ("full", full, fast)) for k in sorted(set(rows) - set(other))]
    dist = []
    for scheme in sorted({k[0] for k in fast} & {k[0] for k in full}):
        f, g = (any(t.get("verdict") in DISTINCT for (sc, _), t in rows.items() if sc == scheme) for rows in (fast, full))
        dist.append(Distinguishable(scheme=scheme, fast=f, full=g, same=f == g))
    record = Record(dirs=(str(a.fast), str(a.full)), conclusions=out, only_one_run=one, distinguishable=dist,
                    all_same=all(c.same for c in out) and all(d.same for d in dist),
                    checkpoints=ckpts, provenance=collect(compress_env=True))
    for c in out:
        print(f"{c.scheme:16s} {c.task:13s} n={c.n[0]}/{c.n[1]} {c.verdict[0]}/{c.verdict[1]} "
              f"{c.outcome[0]}/{c.outcome[1]} {c.recovery_ci_pct[0]} vs {c.recovery_ci_pct[1]}"
              f"{'' if c.same else '  <- differs'}")
    for r in ckpts:
        print(f"{r.scheme:16s} {r.task} {r.metric}: {r.values[0]:.4g} vs {r.values[1]:.4g} (fast vs full), "
              f"delta CI {r.delta_ci95}, {r.verdict}")
    for o in one:
        print(f"{o.scheme:16s} {o.task:13s} {o.run} run only: n={o.n} {o.verdict} {o.outcome} {o.recovery_ci_pct}")
    for d in dist:
        print(f"{d.scheme:16s} distinguishable from the baseline: {d.fast}/{d.full}{'' if d.same else '  <- differs'}")
    path = atomic_write_json(a.out / f"compare_conclusions_{file_stamp()}.json", record)
    print(f"same conclusions: {record.all_same} -> {path}")
    sys.exit(0 if record.all_same else 1)


if __name__ == "__main__":
    main()
