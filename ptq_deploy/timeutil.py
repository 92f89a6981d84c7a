"""The one clock of every result: UTC, ISO-8601 to the second, and the compact form in file names."""

from __future__ import annotations

import datetime as _dt


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def timestamp(when: _dt.datetime | None = None) -> str:
    """``2026-11-23T15:15:00+00:00``: how every result records when it started."""
    return (when or utc_now()).isoformat(timespec="seconds")


def file_stamp(when: _dt.datetime | None = None) -> str:
    """``20261123T151500Z``: the time part of result file names."""
    return (when or utc_now()).strftime("%Y%m%dT%H%M%SZ")
