"""The report's row: one ``Row`` per model x cell, each number rounded once (``sig``: 4 significant digits,
uncertainties 2) in the unit it is shown in (ms, GB, tok/s, %), so every rendering prints the same value.

``collect`` fills the measured figures; the leaderboard sets ``rank``, ``pareto`` and the constraint
fields (``TaskScore.min_recovery_pct`` / ``outcome`` / ``more_docs``, ``Row.quality`` / ``quality_note``).
``flat`` / ``to_frame`` give the flat columns of the CSV and the DataFrame.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel

# a delta vs the baseline: "unknown" when it has no measured uncertainty (no interval to decide with)
Verdict = Literal["baseline", "not distinguishable", "regressed", "improved", "unknown"]
# the non-inferiority test of a recovery against ``--min-recovery`` (see ``noninferiority``)
Outcome = Literal["baseline", "meets", "fails", "inconclusive", "unmeasured"]


def sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` significant digits (None / NaN / inf -> None)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def err(x: float | None) -> float | None:
    """An uncertainty, rounded to 2 significant digits."""
    return sig(x, 2)


class TaskScore(BaseModel):
    """One task's primary metric, its recovery vs the baseline with a 95% interval, and the constraint's outcome."""

    metric: str
    value: float | None
    stderr: float | None = None
    higher_is_better: bool = True
    n: int | None = None  # documents scored (paired with the baseline where per-sample values exist)
    recovery_pct: float | None = None
    recovery_low_pct: float | None = None  # 95% interval of the recovery
    recovery_high_pct: float | None = None
    delta: float | None = None
    delta_stderr: float | None = None
    verdict: Verdict | None = None
    method: str | None = None  # how the delta's uncertainty was obtained
    min_recovery_pct: float | None = None  # the constraint applied (set by the leaderboard)
    outcome: Outcome | None = None
    more_docs: int | None = None  # inconclusive: about how many more documents would decide it
    task_docs: int | None = None  # documents the task holds (lm-eval's "original" count), when recorded


class Row(BaseModel):
    model: str
    cell: str
    scheme: str
    kv_cache: str
    baseline: bool = False
    rank: int | None = None  # set by the leaderboard
    pareto: bool = False  # on the worst-recovery x throughput Pareto front (set by the leaderboard)
    status: dict[str, str] = {}  # step -> ok | failed | not_runnable
    reasons: dict[str, str] = {}  # step -> why it failed / cannot run here
    status_text: str = "ok"
    notes: list[str] = []
    eval_backend: str | None = None
    tasks: dict[str, TaskScore] = {}
    acc_avg: float | None = None
    acc_avg_stderr: float | None = None
    verdict: Verdict | None = None  # over every task: regressed > unknown > improved > not distinguishable
    worst_task: str | None = None  # the task with the lowest recovery
    worst_recovery_pct: float | None = None
    worst_recovery_low_pct: float | None = None
    worst_recovery_high_pct: float | None = None
    quality: Outcome | None = None  # every task's outcome combined (set by the leaderboard)
    quality_note: str = ""  # which task decided it, and how (set by the leaderboard)
    ppl_task: str | None = None
    ppl: float | None = None
    ppl_stderr: float | None = None
    ppl_delta: float | None = None
    ppl_delta_stderr: float | None = None
    throughput_tok_s: float | None = None
    throughput_tok_s_stdev: float | None = None
    throughput_n: int | None = None
    speedup: float | None = None
    speedup_stderr: float | None = None
    latency_source: str | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p99_ms: float | None = None
    load_s: float | None = None
    weights_gb: float | None = None
    memory_gb: float | None = None
    memory_source: str | None = None  # the engine's own (how measured), else the whole process's peak
    kv_tokens: int | None = None  # KV-cache capacity vLLM allocated
    seqs_at_4k: int | None = None  # sequences of 4096 tokens whose KV cache fits at once
    seqs_at_32k: int | None = None
    energy_j_per_token: float | None = None  # NVML, offline throughput iterations (median)
    energy_j_per_token_stdev: float | None = None
    compress_s: float | None = None
    roofline_pct: float | None = None
    quality_only: bool = False  # weights on a POT / APOT grid, stored dense: its own section, never ranked
    method: str | None = None  # weight-only schemes: RTN, GPTQ, AWQ, POT, APOT (the bit-width curve's lines)
    bits_per_weight: float | None = None  # quantized Linear weights: codes + scales (+ zero points) per weight
    effective_gb: float | None = None  # the weights as a deployable format would store them (codes + scales)


def perf_missing(row: Row) -> str:
    """Why ``row`` has no speed numbers, as a note says it: "perf: not runnable here", "perf: failed", ..."""
    st = row.status.get("perf")
    return "perf: " + ({"not_runnable": "not runnable here", "not_applicable": "not applicable"}.get(st, st)
                       if st and st != "ok" else "no result")


def flat(row: Row) -> dict[str, Any]:
    """A row as one flat dict (``tasks.<task>.<field>``, ``status.<step>``): CSV and DataFrame columns."""
    d = row.model_dump()
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == "tasks":
            for t, ts in v.items():
                out.update({f"tasks.{t}.{f}": x for f, x in ts.items()})
        elif isinstance(v, dict):
            out.update({f"{k}.{f}": x for f, x in v.items()})
        elif isinstance(v, list):
            out[k] = json.dumps(v) if v else ""
        else:
            out[k] = v
    return out


def to_frame(rows: list[Row]):
    """The rows as a pandas DataFrame (one row per model x cell, flat columns)."""
    import pandas as pd

    return pd.DataFrame([flat(r) for r in rows])
