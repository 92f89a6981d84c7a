"""The ``Report``: one ranked leaderboard per model, each with a recommendation (``recommend``).

Ranking rule (``RANKING_RULE``): the baseline first; then the schemes meeting every quality constraint
(``noninferiority``), then those still inconclusive, then those failing one, then the unmeasured ones
(with them: any scheme with a recovery that has no measured uncertainty, unless it fails on another
measure); fastest first within a group, ties (and missing throughput) to the higher worst recovery,
then the cell name. Differences inside the noise do not reorder schemes: the outcomes do.

Task columns come in the order that separates the schemes best: the task on which most schemes
differ significantly from the baseline first, ties to the lower worst recovery. Quality-only cells (POT /
APOT: weights on a grid, stored dense) are judged like the others but kept in their own list, never
ranked, on the Pareto front or recommended.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ptq_deploy.report.cells import Cell
from ptq_deploy.report.kv import KVSection
from ptq_deploy.report.noninferiority import judge
from ptq_deploy.report.recommend import Recommendation, recommend
from ptq_deploy.report.regimes import Regimes, regimes
from ptq_deploy.report.row import Row
from ptq_deploy.report.settings import ReportSettings

REPORT_SCHEMA_VERSION = 2
RANKING_RULE = ("baseline first; then schemes meeting every quality constraint, then inconclusive ones, then "
                "failing ones, then unmeasured ones (or with a recovery of unknown uncertainty); fastest first "
                "within a group; ties: higher worst recovery, then name")
GROUP = {"baseline": 0, "meets": 1, "inconclusive": 2, "fails": 3, "unmeasured": 4, None: 4}


class Leaderboard(BaseModel):
    model: str
    baseline: str  # the baseline cell
    tasks: list[str]  # the most discriminating first
    rows: list[Row]  # baseline first, then ranked
    recommendation: Recommendation
    quality_only: list[Row] = []  # judged against the baseline, never ranked or recommended; most bits first
    regimes: Regimes | None = None  # interactive / throughput within the SLOs / capacity (``regimes``)

    def curve_rows(self) -> list[Row]:
        """Every row on the bit-width curve: a weight-only method with its bits per weight."""
        return [r for r in [*self.rows, *self.quality_only] if r.method and r.bits_per_weight is not None]


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    kind: Literal["report"] = "report"
    results_dir: str
    generated_at: str
    constraints: ReportSettings
    constraints_from: str = "defaults"  # defaults | experiment.yaml | command line | experiment.yaml + command line
    ranking_rule: str = RANKING_RULE
    leaderboards: list[Leaderboard]
    kv: list[KVSection] = []  # the KV-cache section (``report.kv``)

    def rows(self) -> list[Row]:
        return [r for lb in self.leaderboards for r in [*lb.rows, *lb.quality_only]]


def _neg(x: float | None) -> float:
    return -x if x is not None else float("inf")


def group(r: Row) -> int:
    g = GROUP[r.quality]
    if g in (1, 2) and any(ts.verdict == "unknown" for ts in r.tasks.values()):
        return GROUP["unmeasured"]
    return g


def rank_key(r: Row):
    return (group(r), _neg(r.throughput_tok_s), _neg(r.worst_recovery_pct), r.cell)


def pareto(rows: Sequence[Row]) -> set[str]:
    """Cells no other cell beats on both worst recovery and throughput (both known)."""
    pts = [(r.cell, r.worst_recovery_pct, r.throughput_tok_s) for r in rows
           if r.worst_recovery_pct is not None and r.throughput_tok_s is not None]
    return {c for c, a, t in pts
            if not any(a2 >= a and t2 >= t and (a2 > a or t2 > t) for _, a2, t2 in pts)}


def task_order(rows: Sequence[Row]) -> list[str]:
    """Tasks, the one on which most schemes differ significantly from the baseline first."""
    tasks = list(dict.fromkeys(t for r in rows for t in r.tasks))

    def key(t: str):
        scores = [r.tasks[t] for r in rows if t in r.tasks and not r.baseline]
        moved = sum(s.verdict in ("regressed", "improved") for s in scores)
        worst = min((s.recovery_pct for s in scores if s.recovery_pct is not None), default=float("inf"))
        return (-moved, worst)

    return sorted(tasks, key=key)


def leaderboard(model: str, rows: Sequence[Row], baseline: str, settings: ReportSettings,
                cells: Sequence[Cell] = ()) -> Leaderboard:
    base = [r for r in rows if r.baseline]
    tasks = task_order(rows)
    judged = [judge(r, settings, list(base[0].tasks) if base else []) for r in rows]
    deployable = [r for r in judged if not r.quality_only]
    front = pareto(deployable)
    ranked = [r for r in deployable if r.baseline] + sorted((r for r in deployable if not r.baseline), key=rank_key)
    out = [r.model_copy(update={"rank": i + 1, "pareto": r.cell in front}) for i, r in enumerate(ranked)]
    research = sorted((r for r in judged if r.quality_only),
                      key=lambda r: (_neg(r.bits_per_weight), r.method or "", r.cell))
    name = base[0].cell if base else baseline
    return Leaderboard(model=model, baseline=name, tasks=tasks, rows=out, recommendation=recommend(out, settings, name),
                       quality_only=research,
                       regimes=regimes(out, cells, name, settings.slo, settings.capacity_context) if out else None)


def build(rows: Sequence[Row], results_dir: Path, settings: ReportSettings, baseline: str,
          constraints_from: str = "defaults", kv: Sequence[KVSection] = (), cells: Sequence[Cell] = ()) -> Report:
    models = list(dict.fromkeys(r.model for r in rows))
    return Report(results_dir=str(results_dir),
                  generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  constraints=settings, constraints_from=constraints_from, kv=list(kv),
                  leaderboards=[leaderboard(m, [r for r in rows if r.model == m], baseline, settings, cells)
                                for m in models])
