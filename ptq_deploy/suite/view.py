"""The suite's console view: a live matrix (state, time per step, ETA) fed by the runner's events.

On a terminal it redraws in place; in a log (CI, a pipe) it prints one line per finished step. It
writes to a duplicate of the terminal, so the steps' own output can go to their logs.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ptq_deploy.suite.events import SuiteListener
from ptq_deploy.suite.plan import PlannedStep

SYMBOL = {"done": "[green]✓ done[/green]", "ok": "[green]✓[/green]", "pending": "[dim]·[/dim]",
          "running": "[yellow]▶ running[/yellow]", "failed": "[red]✗ failed[/red]",
          "not_runnable": "[magenta]n/a here[/magenta]", "not_applicable": "[dim]n/a (quality only)[/dim]",
          "blocked": "[dim]blocked[/dim]"}


def matrix_table(steps: list[PlannedStep], title: str, elapsed: float | None = None) -> Table:
    step_names = list(dict.fromkeys(s.step for s in steps))
    by = {(s.model, s.cell, s.step): s for s in steps}
    t = Table(title=title)
    for c in ("model", "cell", *step_names):
        t.add_column(c)
    for model, cell in dict.fromkeys((s.model, s.cell) for s in steps):
        row = []
        for name in step_names:
            ps = by.get((model, cell, name))
            txt = SYMBOL[ps.state] if ps else ""
            if ps and ps.duration_s and ps.state in ("ok", "done"):
                txt += f" {ps.duration_s:.0f}s"
            row.append(txt)
        t.add_row(model, cell, *row)
    if elapsed is not None:
        done = [s for s in steps if s.state in ("ok", "failed") and s.duration_s]
        todo = [s for s in steps if s.state in ("pending", "running")]
        eta = (sum(s.duration_s for s in done) / len(done) * len(todo)) if done else None
        t.caption = f"elapsed {elapsed:.0f} s" + (f", ETA ~{eta:.0f} s" if eta is not None else "")
    return t


class MatrixView(SuiteListener):
    """A ``SuiteListener`` drawing the matrix on ``console``'s terminal."""

    def __init__(self, console: Console):
        self._term = os.fdopen(os.dup(sys.stderr.fileno()), "w")
        self.console = Console(file=self._term, force_terminal=console.is_terminal, width=console.width)
        self.live: Live | None = None
        self.title, self.steps = "", []

    def on_start(self, title: str, steps: list[PlannedStep]) -> None:
        self.title, self.steps = title, steps
        self.live = Live(matrix_table(steps, title, 0), console=self.console, refresh_per_second=2, transient=False)
        self.live.start()

    def on_step_start(self, step: PlannedStep, elapsed_s: float) -> None:
        self.live.update(matrix_table(self.steps, self.title, elapsed_s))

    def on_step_end(self, step: PlannedStep, elapsed_s: float) -> None:
        if not self.console.is_terminal:  # no live redraws in a log: one line per step
            self.console.print(f"[{elapsed_s:6.0f} s] {step.model}/{step.cell}/{step.step}: {step.state} "
                               f"({step.duration_s:.0f} s){': ' + step.reason if step.reason else ''}",
                               highlight=False, soft_wrap=True)
        self.live.update(matrix_table(self.steps, self.title, elapsed_s))

    def on_finish(self, elapsed_s: float) -> None:
        if self.live is not None:
            self.live.update(matrix_table(self.steps, self.title, elapsed_s))
            self.live.stop()
            if not self.console.is_terminal:  # rich ends the last frame with a newline only on a terminal
                self.console.line()
        self._term.close()
