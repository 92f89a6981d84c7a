"""The non-inferiority test of every quality measure against ``ReportSettings``' minimum recovery.

Per task, with threshold t and the recovery r and its 95% interval [lo, hi] (``quality``):

- *meets* when lo ≥ t, *fails* when hi < t, *inconclusive* in between, and also when the recovery has
  no interval (a measure without measured uncertainty never passes); *unmeasured* without a recovery;
- how much more data: the interval's half-width w on the side facing t shrinks as 1/sqrt(n), so it
  clears t at about n·(w/|r−t|)² documents; "~N more documents" is that minus the n scored, and "this task
  cannot resolve it" when that is more than the task holds. At r = t no amount of data decides.

Per scheme: *fails* if any task fails, else *inconclusive* if any is, else *unmeasured* if any task has
no recovery, else *meets*; ``quality_note`` names the deciding tasks. The baseline is "baseline".
Values are compared as rounded in the report, so what is printed is what was decided.
"""

from __future__ import annotations

import math

from ptq_deploy.report.fmt import num
from ptq_deploy.report.row import Row, TaskScore
from ptq_deploy.report.settings import ReportSettings


def more_docs(ts: TaskScore, t: float) -> int | None:
    """About how many more documents would let the interval clear ``t`` (%); None when unknown."""
    r, lo, hi = ts.recovery_pct, ts.recovery_low_pct, ts.recovery_high_pct
    if r is None or not ts.n or r == t:
        return None
    w = (r - lo if lo is not None else None) if r > t else (hi - r if hi is not None else None)
    if w is None:
        return None
    return max(1, math.ceil(ts.n * (w / abs(r - t)) ** 2 - ts.n))


def outcome(ts: TaskScore | None, t: float) -> str:
    if ts is None or ts.recovery_pct is None:
        return "unmeasured"
    if ts.verdict == "baseline":
        return "baseline"
    lo, hi = ts.recovery_low_pct, ts.recovery_high_pct
    if lo is not None and lo >= t:
        return "meets"
    if hi is not None and hi < t:
        return "fails"
    return "inconclusive"


def judge_task(ts: TaskScore, t: float) -> TaskScore:
    out = outcome(ts, t)
    return ts.model_copy(update={"min_recovery_pct": t, "outcome": out,
                                 "more_docs": more_docs(ts, t) if out == "inconclusive" else None})


def clause(task: str, ts: TaskScore | None) -> str:
    """One task's result against its threshold, e.g. ``austen_ppl 72.2% (95% CI 70.5–74) < 97%``."""
    if ts is None or ts.recovery_pct is None:
        return f"{task} not measured against the baseline"
    t = num(ts.min_recovery_pct)
    if ts.recovery_low_pct is None or ts.recovery_high_pct is None:
        return f"{task} {num(ts.recovery_pct)}% has no interval (no per-sample values or stderr), so cannot pass {t}%"
    head = f"{task} {num(ts.recovery_pct)}% (95% CI {num(ts.recovery_low_pct)}–{num(ts.recovery_high_pct)})"
    if ts.outcome == "meets":
        return f"{head} ≥ {t}%"
    if ts.outcome == "fails":
        return f"{head} < {t}%"
    if ts.recovery_pct == ts.min_recovery_pct:
        return f"{head} straddles {t}%: cannot decide, the point estimate is at the threshold"
    if ts.more_docs and ts.task_docs and ts.n and ts.n + ts.more_docs > ts.task_docs:
        return (f"{head} straddles {t}%: this task cannot resolve it (~{num(ts.n + ts.more_docs)} documents "
                f"needed, it holds {num(ts.task_docs)})")
    more = f"~{num(ts.more_docs)} more documents needed" if ts.more_docs else "more documents needed"
    return f"{head} straddles {t}%: {more}"


def _unmeasured_note(row: Row) -> str:
    st = row.status.get("eval")
    why = {"not_runnable": "eval not runnable here", "failed": "eval failed"}.get(st or "", "not evaluated")
    return f"no quality measurement ({why})" if not row.tasks else ""


def judge(row: Row, settings: ReportSettings, tasks: list[str]) -> Row:
    """``row`` with every task of ``tasks`` (the baseline's, then its own) tested, and the scheme's outcome."""
    names = list(dict.fromkeys([*tasks, *row.tasks]))
    judged = {t: judge_task(row.tasks[t], settings.threshold_pct(t)) for t in row.tasks}
    outs = {t: judged[t].outcome if t in judged else "unmeasured" for t in names}
    if row.baseline and row.tasks:
        return row.model_copy(update={"tasks": judged, "quality": "baseline", "quality_note": "the baseline"})
    if not outs or all(o == "unmeasured" for o in outs.values()):
        return row.model_copy(update={"tasks": judged, "quality": "unmeasured",
                                      "quality_note": _unmeasured_note(row) or "no recovery vs the baseline"})
    for q in ("fails", "inconclusive", "unmeasured", "meets"):
        deciding = [t for t in names if outs[t] == q]
        if deciding:
            break
    if q == "fails":  # the most clearly failing first
        deciding.sort(key=lambda t: judged[t].recovery_high_pct - judged[t].min_recovery_pct)
    note = "; ".join(clause(t, judged.get(t)) for t in deciding)
    return row.model_copy(update={"tasks": judged, "quality": q, "quality_note": note})
