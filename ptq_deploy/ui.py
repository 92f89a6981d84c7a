"""Console helpers (rich): one shared console, status spinners, progress bars."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@contextmanager
def status(message: str):
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(f"[dim]... {message}[/dim]")
        yield


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not sys.stderr.isatty())
