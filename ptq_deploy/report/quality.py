"""A cell's quality figures: each task's primary metric and its recovery vs the baseline, with a 95% interval.

- recovery = candidate / baseline for higher-is-better metrics (accuracy), baseline / candidate for
  lower-is-better ones (perplexity), so recovery < 100% always means "worse than the baseline";
- its 95% interval is the delta's (``eval.recovery.compare_task``: paired bootstrap over the documents
  both runs scored, else the two lm-eval stderrs combined as independent) mapped through the observed
  baseline value b: ``(b+lo)/b .. (b+hi)/b`` (higher is better), ``b/(b+hi) .. b/(b+lo)`` (lower is
  better). The ratio is not bootstrapped itself: pairing makes the delta carry the uncertainty, and b
  is treated as fixed. No interval when the delta has none (verdict "unknown");
- the eval compared is the one scored with the same backend as the baseline's, with the same settings;
- ``acc_avg``: the mean over higher-is-better tasks; ``worst_*``: the task with the lowest recovery;
  ``ppl*``: the first perplexity task and its delta.
"""

from __future__ import annotations

import math
from typing import Any

from ptq_deploy.errors import UsageError
from ptq_deploy.eval import recovery
from ptq_deploy.report.cells import Cell
from ptq_deploy.report.row import Row, TaskScore, err, sig


def _is_accuracy(task) -> bool:
    m = task.primary_metric()
    hib = task.metrics[m].higher_is_better
    return hib if hib is not None else not m.endswith(("perplexity", "bits_per_byte"))


def evals(c: Cell) -> dict[str, Any]:
    """backend -> EvalResult of this cell (``eval`` first, then ``eval-hf``)."""
    out: dict[str, Any] = {}
    for step in ("eval", "eval-hf"):
        r = c.results.get(step)
        if r is not None:
            out.setdefault(r.backend, r)
    return out


def recovery_interval(r) -> tuple[float | None, float | None]:
    """The 95% interval of a ``Recovery``'s ratio, in %, from its delta's interval (None, None without one)."""
    if r.ci95 is None or not r.baseline:
        return None, None
    b, (lo, hi) = r.baseline, r.ci95
    if r.higher_is_better:
        return sig((b + lo) / b * 100), sig((b + hi) / b * 100)
    low = b / (b + hi) * 100 if b + hi > 0 else None
    high = b / (b + lo) * 100 if b + lo > 0 else math.inf
    return sig(low), sig(high)


def combine_verdicts(vs: list[str]) -> str | None:
    if not vs:
        return None
    for v in ("regressed", "unknown", "improved"):
        if v in vs:
            return v
    return "not distinguishable"


def _n(t) -> int | None:
    n = t.n_samples.get("effective") if isinstance(t.n_samples, dict) else None
    return n if n else len(t.per_sample.doc_ids) if t.per_sample else None


def _scores(row: Row, ev) -> None:
    acc_vals, acc_ses = [], []
    for name, t in ev.tasks.items():
        m = t.primary_metric()
        mv = t.metrics[m]
        row.tasks[name] = TaskScore(metric=m, value=sig(mv.value), stderr=err(mv.stderr),
                                    higher_is_better=_is_accuracy(t), n=_n(t),
                                    task_docs=t.n_samples.get("original") if isinstance(t.n_samples, dict) else None)
        if _is_accuracy(t):
            acc_vals.append(mv.value)
            acc_ses.append(mv.stderr)
        elif row.ppl_task is None and "perplexity" in m:
            row.ppl_task, row.ppl, row.ppl_stderr = name, sig(mv.value), err(mv.stderr)
    if acc_vals:
        row.acc_avg = sig(sum(acc_vals) / len(acc_vals))
        if all(s is not None for s in acc_ses):
            row.acc_avg_stderr = err(math.sqrt(sum(s * s for s in acc_ses)) / len(acc_ses))


def _baseline_eval(row: Row, c: Cell, base: Cell | None, backend: str, ev):
    """The baseline's eval to compare ``ev`` with, or None (with a note saying why)."""
    if base is None:
        row.notes.append("no baseline cell: recovery not computed")
        return None
    bev = evals(base).get(backend)
    if bev is None:
        row.notes.append(f"the baseline {base.cell} has no {backend}-backend eval: recovery not computed")
        return None
    diff = bev.settings.differences(ev.settings)
    if c.kv_cache != "none":
        diff.pop("kv_cache_dtype", None)  # the KV-cache dtype is what this cell changes
    if diff:
        what = ", ".join(f"{k}: baseline {a!r} vs {b!r}" for k, (a, b) in diff.items())
        row.notes.append(f"eval settings differ from the baseline ({what}): recovery not computed")
        return None
    return bev


def _worst(row: Row) -> None:
    scored = [(t, s) for t, s in row.tasks.items() if s.recovery_pct is not None]
    if scored:
        t, s = min(scored, key=lambda ts: ts[1].recovery_pct)
        row.worst_task, row.worst_recovery_pct = t, s.recovery_pct
        row.worst_recovery_low_pct, row.worst_recovery_high_pct = s.recovery_low_pct, s.recovery_high_pct


def fill(row: Row, c: Cell, base: Cell | None, iters: int, seed: int) -> None:
    """Set the row's task scores, recoveries, verdict and perplexity figures from the cell's eval."""
    evs = evals(c)
    if not evs:
        return
    backend = "vllm" if "vllm" in evs else next(iter(evs))
    ev = evs[backend]
    row.eval_backend = backend
    if ev.activations == "not emulated":
        row.quality_only = True  # judged against the baseline, never ranked: its activations ran 16-bit
        row.notes.append(f"{row.scheme} quantizes activations but this score ran them 16-bit (a dense copy without "
                         "its activation spec): judged apart, not ranked; dequantize it again (the copy then carries "
                         "the spec vLLM quantizes them by) or score it with `fallback: hf`")
    elif ev.dequantized_from:
        emulated = ", activations quantized as the scheme says" if ev.activations == "emulated" else ""
        row.notes.append(f"quality scored in vLLM on dequantized weights{emulated}; speed not measured here")
    _scores(row, ev)
    if row.baseline:
        row.verdict = "baseline"
        for ts in row.tasks.values():
            ts.recovery_pct = ts.recovery_low_pct = ts.recovery_high_pct = 100.0
            ts.verdict = "baseline"
        _worst(row)
        return
    bev = _baseline_eval(row, c, base, backend, ev)
    if bev is None:
        return
    recs = {}
    for name, t in ev.tasks.items():
        if name in bev.tasks and t.primary_metric() in bev.tasks[name].metrics:
            try:
                recs[name] = recovery.compare_task(bev.tasks[name], t, t.primary_metric(), iters=iters, seed=seed)
            except UsageError as e:
                row.notes.append(f"{name}: {e}")
    for name, r in recs.items():
        ts = row.tasks[name]
        ts.recovery_pct = sig(r.recovery * 100) if r.recovery is not None else None
        ts.recovery_low_pct, ts.recovery_high_pct = recovery_interval(r)
        ts.delta, ts.delta_stderr, ts.verdict, ts.method = sig(r.delta), err(r.stderr), r.verdict, r.method
        ts.n = r.n_paired or ts.n
    row.verdict = combine_verdicts([r.verdict for r in recs.values()])
    _worst(row)
    if row.ppl_task in recs:
        r = recs[row.ppl_task]
        row.ppl_delta, row.ppl_delta_stderr = sig(r.delta), err(r.stderr)
