"""The one number formatter of every report output (Markdown, HTML, sentences, comparisons).

Row values are already rounded (``collect.sig``); ``num`` prints a float's shortest round-trip
form, so a number read back from the Markdown equals the JSON's exactly.
"""

from __future__ import annotations

MISSING = "–"


def num(v: float | int | None, sign: bool = False) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return str(v)
    s = repr(float(v)) if isinstance(v, float) else str(v)
    if s.endswith(".0"):
        s = s[:-2]
    if sign and not s.startswith("-"):
        s = "+" + s
    return s


def pm(v: float | None, err: float | None, sign: bool = False) -> str:
    """``value ± err`` (just the value when there is no uncertainty)."""
    if v is None:
        return MISSING
    return num(v, sign) if err is None else f"{num(v, sign)} ± {num(err)}"
