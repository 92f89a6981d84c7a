"""The recommendation of one model's leaderboard, under ``ReportSettings``.

Candidates: the cells (baseline included) that *meet* every quality measure (``noninferiority``) and
the weights / throughput limits; never a quality-only cell (weights on a POT / APOT grid, stored dense). The recommended one is the fastest candidate, then the smallest,
then the one with the higher worst recovery. Every other cell is either *excluded*, with the binding
constraint (the failing measures, most clearly failing first; the limit it exceeds; or "no quality
measurement"), or *inconclusive*, with the measures that need more data and about how much.
``decided_by`` counts, per measure, the schemes it excluded or left undecided.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from ptq_deploy.report.fmt import num
from ptq_deploy.report.noninferiority import clause
from ptq_deploy.report.row import Row, perf_missing
from ptq_deploy.report.settings import ReportSettings


class Recommendation(BaseModel):
    cell: str | None
    scheme: str | None
    why: str
    candidates: list[str] = []  # cells meeting every constraint, best first
    excluded: dict[str, str] = {}  # cell -> the binding constraint
    inconclusive: dict[str, str] = {}  # cell -> the measures needing more data, and about how much
    decided_by: dict[str, int] = {}  # measure -> number of schemes it excluded or left undecided
    best_quantized: str | None = None  # when the baseline is recommended: the best quantized candidate


def _neg(x: float | None) -> float:
    return -x if x is not None else float("inf")


def limits(r: Row, s: ReportSettings) -> list[str]:
    """The weights / throughput limits ``r`` does not meet, one phrase each."""
    out = []
    if s.max_memory_gb is not None and (r.weights_gb is None or r.weights_gb > s.max_memory_gb):
        out.append(f"weights {num(r.weights_gb)} GB > {num(s.max_memory_gb)} GB" if r.weights_gb is not None
                   else "weights not measured")
    if s.min_throughput is not None and (r.throughput_tok_s is None or r.throughput_tok_s < s.min_throughput):
        out.append(f"throughput {num(r.throughput_tok_s)} < {num(s.min_throughput)} tok/s"
                   if r.throughput_tok_s is not None else "throughput not measured")
    return out


def _why(b: Row, n_ok: int, s: ReportSettings, baseline: str) -> str:
    facts = ["it is the baseline" if b.baseline else
             ", ".join(clause(t, ts) for t, ts in b.tasks.items())]
    if b.throughput_tok_s is not None:
        speed = f" ({num(b.speedup)}x {baseline})" if b.speedup is not None and not b.baseline else ""
        facts.append(f"runs at {num(b.throughput_tok_s)} output tok/s{speed}")
    if b.weights_gb is not None:
        facts.append(f"needs {num(b.weights_gb)} GB of weights")
    what = ("the fastest" if b.throughput_tok_s is not None else "the smallest" if b.weights_gb is not None
            else "the most accurate")
    return (f"{b.cell}: {what} of the {n_ok} cell{'s' if n_ok > 1 else ''} meeting {s.describe()}; "
            + "; ".join(facts) + ".")


def recommend(rows: Sequence[Row], s: ReportSettings, baseline: str) -> Recommendation:
    ok, excluded, undecided, deciding = [], {}, {}, Counter()
    for r in (r for r in rows if not r.quality_only):  # stored dense: measured for quality, never deployed
        lim = limits(r, s)
        if r.quality == "fails" or lim:
            excluded[r.cell] = "; ".join(([r.quality_note] if r.quality == "fails" else []) + lim)
            deciding.update(t for t, ts in r.tasks.items() if ts.outcome == "fails")
            deciding.update(x.split(" ")[0] for x in lim)
        elif r.quality == "inconclusive":
            undecided[r.cell] = r.quality_note
            deciding.update(t for t, ts in r.tasks.items() if ts.outcome == "inconclusive")
        elif r.quality in ("meets", "baseline"):
            ok.append(r)
        else:
            excluded[r.cell] = r.quality_note or "no quality measurement"
    ok.sort(key=lambda r: (_neg(r.throughput_tok_s), r.weights_gb if r.weights_gb is not None else float("inf"),
                           _neg(r.worst_recovery_pct), r.cell))
    common = {"candidates": [r.cell for r in ok], "excluded": excluded, "inconclusive": undecided,
              "decided_by": dict(deciding.most_common())}
    if not ok:
        why = (f"No scheme meets {s.describe()} ({len(undecided)} of {len(rows)} cells inconclusive: more data would "
               "decide them); relax a constraint or measure more.")
        return Recommendation(cell=None, scheme=None, why=why, **common)
    b = ok[0]
    why = _why(b, len(ok), s, baseline)
    q = next((r for r in ok if not r.baseline), None) if b.baseline else None
    if q is not None:
        why += " " + _quantized(q, b)
    elif b.baseline:
        why += " No quantized scheme meets the quality rule."
    return Recommendation(cell=b.cell, scheme=b.scheme, why=why, best_quantized=q.cell if q else None, **common)


def _quantized(q: Row, base: Row) -> str:
    """The best quantized candidate when the baseline wins: what it saves and what it costs."""
    size = (f" at {num(q.weights_gb)} GB of weights ({q.weights_gb / base.weights_gb - 1:+.0%} vs "
            f"{num(base.weights_gb)} GB)" if q.weights_gb and base.weights_gb else "")
    if q.throughput_tok_s is not None:
        speed = f"; it runs at {num(q.throughput_tok_s)} output tok/s ({num(q.speedup)}x the baseline)"
    else:
        speed = f"; its speed was not measured here ({perf_missing(q)})"
    return f"Best quantized: {q.cell} meets the quality rule{size}{speed}."
