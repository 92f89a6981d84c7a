"""Console helpers (rich): one shared console, status spinners, progress bars."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def _piped_width(stream) -> int | None:
    """Piped into a file or a CI log, tables get 160 columns instead of rich's 80 (COLUMNS still wins)."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 160


console = Console(stderr=True, soft_wrap=True, width=_piped_width(sys.stderr))
out = Console(soft_wrap=True, width=_piped_width(sys.stdout))


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


def option_default(model: type[BaseModel], field: str):
    """A CLI option's default, read from the config model that owns the field (written once)."""
    return model.model_fields[field].get_default(call_default_factory=True)


def option_help(model: type[BaseModel], field: str) -> str:
    return model.model_fields[field].description or ""
