"""User-facing errors: one clear line, a non-zero exit, never a traceback."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydantic


class PtqError(Exception):
    """A mistake or condition the user can act on. The CLI prints ``error: <message>``."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(PtqError):
    """Bad input: missing path, unknown name, existing output without --force."""

    exit_code = 2


class NotRunnableHere(PtqError):
    """The scheme or option cannot run on this hardware / vLLM build."""

    exit_code = 3


class BundleError(PtqError):
    """An offline bundle that cannot be built, is incomplete or altered, or was made for another host."""

    exit_code = 4


# the parts of a pydantic error location that name a union member's type, not a key the user wrote
_TYPE_TAG = re.compile(r"^(int|float|str|bool|none|bytes|list|dict|tuple|set|literal|constrained-\w+|"
                       r"function-\w+|is-instance|json-or-python)(\[.*\])?$")


def validation_line(e: "pydantic.ValidationError") -> str:
    """``key.path: message`` for a pydantic error: an unknown key first (it is often the cause of a "Field
    required" beside it), the location without pydantic's union-member tags (``limit``, not ``limit.int``)."""
    errs = e.errors()
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and _TYPE_TAG.match(p))]
    key = ".".join(loc)
    msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown key"
    return f"{key}: {msg}" if key else msg


def one_line(e: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line (a multi-line message's lines joined), at most ``limit`` characters."""
    msg = " ".join(str(e).split())
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
