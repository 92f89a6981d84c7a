"""The ``report`` command's console view: per model, the main columns (the files carry them all), the
recommendation, and what excluded or left undecided every other scheme."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ptq_deploy.report.leaderboard import Leaderboard, Report
from ptq_deploy.report.render import QUALITY_ONLY, STAR, Column, columns, decisions, quality_only_columns, table_frame

# the columns shown, by their first field (or header when they show none), and every task's recovery
SHOWN = ("rank", "scheme", "quality", "throughput_tok_s", "speedup", "weights_gb")


def _shown(c: Column) -> bool:
    first = c.fields[0] if c.fields else c.header
    return first in SHOWN or first.startswith("tasks.") and first.endswith(".recovery_pct")


def _rich(df, title: str) -> Table:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c)
    for row in df.itertuples(index=False):
        t.add_row(*row)
    return t


def _table(lb: Leaderboard) -> Table:
    cols = [c for c in columns(lb) if _shown(c)]
    t = _rich(table_frame(lb, cols=cols), f"{lb.model} (baseline {lb.baseline}; every column: leaderboard.md / report.html)")
    t.caption = STAR
    return t


def print_report(rep: Report, out: Console) -> None:
    """Print every leaderboard with its recommendation and decisions (and its quality-only rows apart)."""
    out.print(f"constraints ({rep.constraints_from}): {rep.constraints.describe()}", highlight=False)
    for lb in rep.leaderboards:
        out.print(_table(lb))
        if lb.quality_only:
            cols = [c for c in quality_only_columns(lb) if c.header in ("method", "bits/weight", "effective GB")
                    or _shown(c)]
            out.print(_rich(table_frame(lb, cols=cols, rows=lb.quality_only), f"{lb.model}: {QUALITY_ONLY}"))
        for r in [*lb.rows, *lb.quality_only]:  # a result that could not be read, by its file
            for n in r.notes:
                out.print(f"[yellow]{r.cell}:[/yellow] {escape(n)}", highlight=False)
        out.print(f"[bold]recommendation:[/bold] {lb.recommendation.why}", highlight=False)
        for heading, items in decisions(lb.recommendation):
            out.print(f"[bold]{heading.lower()}:[/bold]", highlight=False)
            for x in items:
                out.print(f"  - {x}", highlight=False, markup=False)
        if lb.regimes is not None:
            out.print(f"[bold]serving regimes[/bold] (latency targets: {escape(rep.constraints.describe_slo())}):",
                      highlight=False)
            for r in lb.regimes.results:
                out.print(f"  - {r.regime}{f' ({r.shape})' if r.shape else ''}: {r.text}", highlight=False,
                          markup=False)
            for x in [*lb.regimes.crossovers, *lb.regimes.untimed]:
                out.print(f"  - {x}", highlight=False, markup=False)
    for s in rep.kv:
        if s.recommendation:
            out.print(f"[bold]KV recommendation ({s.model}, {s.cell}):[/bold] {escape(s.recommendation)}",
                      highlight=False)
