"""``report A B``: two result sets side by side, per model x cell, with B - A for each figure, and whether they
reach the same conclusions (each scheme's verdict against its baseline and its outcome against the constraint).

Cells are matched by model and cell name; when each side holds one model and their names differ (the same
experiment on another model or at another size), by cell name alone, and the comparison says so. A cell present
on one side only is listed with the other side empty. Deltas are computed from the rounded report values (and
rounded the same way).
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

from pydantic import BaseModel

from ptq_deploy.report.fmt import MISSING, num
from ptq_deploy.report.leaderboard import Report
from ptq_deploy.report.row import sig

METRICS: dict[str, str] = {  # Row field -> header
    "worst_recovery_pct": "worst recovery %",
    "acc_avg": "acc avg",
    "ppl": "perplexity",
    "throughput_tok_s": "out tok/s",
    "speedup": "speedup",
    "ttft_p50_ms": "TTFT p50 ms",
    "tpot_p50_ms": "TPOT p50 ms",
    "load_s": "load s",
    "weights_gb": "weights GB",
    "memory_gb": "engine mem GB",
    "kv_tokens": "KV tokens",
}


class CompareRow(BaseModel):
    model: str
    cell: str
    only_in: Literal["a", "b"] | None = None
    verdict_a: str | None = None
    verdict_b: str | None = None
    quality_a: str | None = None  # the constraint outcome (meets | fails | inconclusive | ...)
    quality_b: str | None = None
    a: dict[str, float | None]
    b: dict[str, float | None]
    delta: dict[str, float | None]  # b - a


class Agreement(BaseModel):
    """The conclusions of the cells both sides hold (baselines left out)."""

    cells: int
    same_verdict: int  # distinguishable from the baseline, and which way, as in A
    same_quality: int  # the constraint's outcome (meets / fails / inconclusive / unmeasured)
    differ: dict[str, str] = {}  # cell -> what differs, "verdict A -> B; quality A -> B"


class Comparison(BaseModel):
    schema_version: int = 1
    kind: Literal["report-compare"] = "report-compare"
    a: str
    b: str
    generated_at: str
    metrics: dict[str, str] = METRICS
    matched_by: Literal["model and cell", "cell"] = "model and cell"
    note: str = ""
    rows: list[CompareRow]
    agreement: Agreement | None = None


def _agreement(rows: list[CompareRow]) -> Agreement:
    both = [r for r in rows if r.only_in is None and r.quality_a != "baseline"]
    differ = {}
    for r in both:
        what = [f"{k} {x or MISSING} -> {y or MISSING}" for k, x, y in
                (("verdict", r.verdict_a, r.verdict_b), ("quality", r.quality_a, r.quality_b)) if x != y]
        if what:
            differ[r.cell] = "; ".join(what)
    return Agreement(cells=len(both), same_verdict=sum(r.verdict_a == r.verdict_b for r in both),
                     same_quality=sum(r.quality_a == r.quality_b for r in both), differ=differ)


def compare(a: Report, b: Report) -> Comparison:
    models_a, models_b = {r.model for r in a.rows()}, {r.model for r in b.rows()}
    by_cell = len(models_a) == len(models_b) == 1 and models_a != models_b
    key = (lambda r: ("", r.cell)) if by_cell else (lambda r: (r.model, r.cell))
    ra = {key(r): r for r in a.rows()}
    rb = {key(r): r for r in b.rows()}
    rows = []
    for k in dict.fromkeys([*ra, *rb]):
        x, y = ra.get(k), rb.get(k)
        va = {m: getattr(x, m) if x else None for m in METRICS}
        vb = {m: getattr(y, m) if y else None for m in METRICS}
        d = {m: sig(vb[m] - va[m]) if va[m] is not None and vb[m] is not None else None for m in METRICS}
        model = f"{next(iter(models_a))} vs {next(iter(models_b))}" if by_cell else k[0]
        rows.append(CompareRow(model=model, cell=k[1], only_in=None if x and y else "a" if x else "b",
                               verdict_a=x.verdict if x else None, verdict_b=y.verdict if y else None,
                               quality_a=x.quality if x else None, quality_b=y.quality if y else None,
                               a=va, b=vb, delta=d))
    note = (f"the models differ (A: {next(iter(models_a))}, B: {next(iter(models_b))}): cells matched by scheme"
            if by_cell else "")
    return Comparison(a=a.results_dir, b=b.results_dir, rows=rows, matched_by="cell" if by_cell else "model and cell",
                      note=note, agreement=_agreement(rows),
                      generated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def conclusions(c: Comparison) -> list[str]:
    """The comparison's conclusions, one line each (the console's and the Markdown's)."""
    out = [c.note] if c.note else []
    g = c.agreement
    if g is not None and g.cells:
        out.append(f"conclusions: {g.same_verdict} of {g.cells} schemes have the same verdict against the baseline, "
                   f"{g.same_quality} of {g.cells} the same outcome against the constraint")
        out += [f"  {cell}: {what}" for cell, what in g.differ.items()]
    only = [f"{r.cell} (only in {r.only_in.upper()})" for r in c.rows if r.only_in]
    if only:
        out.append("not in both: " + ", ".join(only))
    return out


def _cell(r: CompareRow, m: str) -> str:
    a, b, d = r.a[m], r.b[m], r.delta[m]
    if a is None and b is None:
        return MISSING
    return f"{num(a)} → {num(b)}" + (f" ({num(d, sign=True)})" if d is not None else "")


def table_frame(c: Comparison, model: str):
    import pandas as pd

    rows = [[r.cell + (f" (only in {r.only_in.upper()})" if r.only_in else ""),
             f"{r.quality_a or MISSING} → {r.quality_b or MISSING}",
             f"{r.verdict_a or MISSING} → {r.verdict_b or MISSING}", *(_cell(r, m) for m in METRICS)]
            for r in c.rows if r.model == model]
    return pd.DataFrame(rows, columns=["scheme", "quality", "verdict", *(f"{h} A → B (Δ)" for h in METRICS.values())])


def markdown(c: Comparison) -> str:
    lines = ["# ptq-deploy report: A vs B", "", f"A: {c.a}  ", f"B: {c.b}  ", f"Generated {c.generated_at}.", "",
             *(f"{ln}  " for ln in conclusions(c)), ""]
    for model in dict.fromkeys(r.model for r in c.rows):
        lines += [f"## {model}", "", table_frame(c, model).to_markdown(index=False, tablefmt="github",
                                                                        disable_numparse=True), ""]
    return "\n".join(lines)


def to_csv(c: Comparison) -> str:
    import pandas as pd

    flat = [{"model": r.model, "cell": r.cell, "only_in": r.only_in, "verdict_a": r.verdict_a,
             "verdict_b": r.verdict_b, "quality_a": r.quality_a, "quality_b": r.quality_b,
             **{f"{m}.a": r.a[m] for m in METRICS}, **{f"{m}.b": r.b[m] for m in METRICS},
             **{f"{m}.delta": r.delta[m] for m in METRICS}} for r in c.rows]
    return pd.DataFrame(flat).to_csv(index=False)


def html(c: Comparison) -> str:
    from html import escape

    from ptq_deploy.report.html import CSS

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ptq-deploy report A vs B</title>"
             f"<style>{CSS}</style></head><body><h1>ptq-deploy report: A vs B</h1>",
             f"<p class='small'>A: {escape(c.a)}<br>B: {escape(c.b)}<br>Generated {escape(c.generated_at)}</p>"]
    for model in dict.fromkeys(r.model for r in c.rows):
        parts += [f"<h2>{escape(model)}</h2>", table_frame(c, model).to_html(index=False, escape=True, border=0)]
    parts.append("</body></html>")
    return "\n".join(parts)
