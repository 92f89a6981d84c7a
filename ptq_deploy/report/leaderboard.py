"""The ``Report``: one ranked leaderboard per model and a recommendation under the user's constraints.

Ranking rule (``RANKING_RULE``): the baseline first; then the schemes statistically indistinguishable
from the baseline (or better) on accuracy *and* perplexity, fastest first; then the schemes that
regressed on either, fastest first; then the schemes without an accuracy measurement, fastest first.
Ties (and missing throughput) fall back to the smaller perplexity increase — the more sensitive
measure on small task sets — then the higher recovery, then the cell name. Differences inside the
noise do not reorder schemes: the verdicts do.

Recommendation: among a model's cells (baseline included) that meet every constraint
(recovery ≥ ``min_recovery``; weights ≤ ``max_memory_gb``; output tok/s ≥ ``min_throughput``), the one
with the highest throughput, then the smallest weights, then the highest recovery.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ptq_deploy.report.collect import Row
from ptq_deploy.report.fmt import num, pm

REPORT_SCHEMA_VERSION = 1
RANKING_RULE = ("baseline first; then schemes not distinguishable from (or better than) the baseline in accuracy "
                "and perplexity, fastest first; then schemes regressed in either, fastest first; then schemes "
                "without an accuracy measurement; ties: smaller perplexity increase, then higher recovery, then name")


class Constraints(BaseModel):
    min_recovery: float | None = Field(0.99, ge=0, le=1, description="fraction of the baseline's accuracy (0.99 = 99%)")
    max_memory_gb: float | None = Field(None, gt=0, description="weights held in memory, GB (1e9 bytes)")
    min_throughput: float | None = Field(None, ge=0, description="offline output tokens/s")

    def describe(self) -> str:
        parts = []
        if self.min_recovery is not None:
            parts.append(f"recovery ≥ {num(self.min_recovery * 100)}%")
        if self.max_memory_gb is not None:
            parts.append(f"weights ≤ {num(self.max_memory_gb)} GB")
        if self.min_throughput is not None:
            parts.append(f"throughput ≥ {num(self.min_throughput)} tok/s")
        return ", ".join(parts) or "no constraints"

    def failures(self, r: Row) -> list[str]:
        out = []
        if self.min_recovery is not None and (r.recovery_pct is None or r.recovery_pct < self.min_recovery * 100):
            out.append("recovery")
        if self.max_memory_gb is not None and (r.weights_gb is None or r.weights_gb > self.max_memory_gb):
            out.append("memory")
        if self.min_throughput is not None and (r.throughput_tok_s is None or r.throughput_tok_s < self.min_throughput):
            out.append("throughput")
        return out


class Recommendation(BaseModel):
    cell: str | None
    scheme: str | None
    why: str
    candidates: list[str] = []  # cells meeting every constraint, best first


class Leaderboard(BaseModel):
    model: str
    baseline: str  # the baseline cell
    tasks: list[str]
    rows: list[Row]  # baseline first, then ranked
    recommendation: Recommendation


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    kind: Literal["report"] = "report"
    results_dir: str
    generated_at: str
    constraints: Constraints
    ranking_rule: str = RANKING_RULE
    leaderboards: list[Leaderboard]

    def rows(self) -> list[Row]:
        return [r for lb in self.leaderboards for r in lb.rows]


def _neg(x: float | None) -> float:
    return -x if x is not None else float("inf")


def regressed(r: Row) -> bool:
    return "regressed" in (r.verdict, r.ppl_verdict)


def rank_key(r: Row):
    group = 2 if r.verdict is None and r.ppl_verdict is None else 1 if regressed(r) else 0
    ppl = r.ppl_delta if r.ppl_delta is not None else float("inf")
    return (group, _neg(r.throughput_tok_s), ppl, _neg(r.recovery_pct), r.cell)


def pareto(rows: Sequence[Row]) -> set[str]:
    """Cells no other cell beats on both recovery and throughput (both known)."""
    pts = [(r.cell, r.recovery_pct, r.throughput_tok_s) for r in rows
           if r.recovery_pct is not None and r.throughput_tok_s is not None]
    return {c for c, a, t in pts
            if not any(a2 >= a and t2 >= t and (a2 > a or t2 > t) for _, a2, t2 in pts)}


def recommend(rows: Sequence[Row], cons: Constraints, baseline: str) -> Recommendation:
    ok = [r for r in rows if not cons.failures(r)]
    ok.sort(key=lambda r: (_neg(r.throughput_tok_s), r.weights_gb if r.weights_gb is not None else float("inf"),
                           _neg(r.recovery_pct), r.cell))
    if not ok:
        measured = [r for r in rows if r.recovery_pct is not None or r.throughput_tok_s is not None]
        return Recommendation(cell=None, scheme=None,
                              why=f"No scheme meets {cons.describe()} ({len(measured)} of {len(rows)} cells measured); "
                                  "relax a constraint or run the missing steps.")
    b = ok[0]
    facts = []
    if b.recovery_pct is not None:
        facts.append("it is the baseline" if b.baseline else
                     f"it keeps {pm(b.recovery_pct, b.recovery_pct_stderr)}% of {baseline}'s accuracy "
                     f"({b.verdict})")
        if b.ppl_verdict == "regressed" and b.ppl_delta is not None:
            facts.append(f"perplexity {pm(b.ppl_delta, b.ppl_delta_stderr, sign=True)} (regressed)")
    if b.throughput_tok_s is not None:
        speed = f" ({num(b.speedup)}x {baseline})" if b.speedup is not None and not b.baseline else ""
        facts.append(f"runs at {num(b.throughput_tok_s)} output tok/s{speed}")
    if b.weights_gb is not None:
        facts.append(f"needs {num(b.weights_gb)} GB of weights")
    what = ("the fastest" if b.throughput_tok_s is not None else "the smallest" if b.weights_gb is not None
            else "the most accurate")
    why = (f"{b.cell}: {what} of the {len(ok)} cell{'s' if len(ok) > 1 else ''} meeting {cons.describe()}; "
           + ", ".join(facts) + ".")
    return Recommendation(cell=b.cell, scheme=b.scheme, why=why, candidates=[r.cell for r in ok])


def leaderboard(model: str, rows: Sequence[Row], baseline: str, cons: Constraints) -> Leaderboard:
    front = pareto(rows)
    base = [r for r in rows if r.baseline]
    ranked = base + sorted((r for r in rows if not r.baseline), key=rank_key)
    out = [r.model_copy(update={"rank": i + 1, "pareto": r.cell in front}) for i, r in enumerate(ranked)]
    tasks = list(dict.fromkeys(t for r in out for t in r.tasks))
    return Leaderboard(model=model, baseline=base[0].cell if base else baseline, tasks=tasks, rows=out,
                       recommendation=recommend(out, cons, base[0].cell if base else baseline))


def build(rows: Sequence[Row], results_dir: Path, cons: Constraints, baseline: str) -> Report:
    models = list(dict.fromkeys(r.model for r in rows))
    return Report(results_dir=str(results_dir),
                  generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  constraints=cons,
                  leaderboards=[leaderboard(m, [r for r in rows if r.model == m], baseline, cons) for m in models])
