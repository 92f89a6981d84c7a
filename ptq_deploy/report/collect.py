"""``collect(results_dir)``: one typed ``Row`` per model x cell of a suite results dir.

Reading is ``cells``' job, quality figures (scores, recoveries with their 95% intervals, verdicts)
``quality``'s, speed and size figures ``measures``'; every figure is measured against the model's
baseline cell (``experiment.yaml``'s ``baseline``, default BF16) and rounded once (``row.sig``).
"""

from __future__ import annotations

from pathlib import Path

from ptq_deploy.report import measures, quality
from ptq_deploy.report.cells import Cell, baseline_scheme, load_cells
from ptq_deploy.report.row import Row


def _status(c) -> tuple[dict[str, str], dict[str, str], str]:
    status = {s: r.status for s, r in c.steps.items()}
    reasons = {s: r.reason for s, r in c.steps.items() if r.reason}
    text = {"not_runnable": "not runnable here", "not_applicable": "not applicable"}
    bad = [f"{s}: {text.get(st, 'failed')}" for s, st in status.items() if st != "ok"]
    return status, reasons, "; ".join(bad) or "ok"


def collect(root: Path, baseline: str | None = None, iters: int = 1000, seed: int = 0,
            cells: list[Cell] | None = None) -> list[Row]:
    """One Row per model x cell found in ``root`` (in the order of the step records; ``cells``: already read)."""
    root = Path(root)
    cells = load_cells(root) if cells is None else cells
    base_cell = baseline or baseline_scheme(root)
    bases = {c.model: c for c in cells if c.cell == base_cell}
    rows = []
    for c in cells:
        status, reasons, text = _status(c)
        row = Row(model=c.model, cell=c.cell, scheme=c.scheme, kv_cache=c.kv_cache, baseline=c.cell == base_cell,
                  status=status, reasons=reasons, status_text=text, notes=list(c.problems))
        base = bases.get(c.model)
        quality.fill(row, c, base, iters, seed)
        measures.fill(row, c, base)
        rows.append(row)
    return rows
