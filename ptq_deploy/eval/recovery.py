"""Recovery of a quantized checkpoint vs its baseline, with an uncertainty and a verdict.

Per task and primary metric: baseline, quantized, delta = quantized - baseline, and recovery =
quantized / baseline for higher-is-better metrics (accuracy) or baseline / quantized for
lower-is-better ones (perplexity), so that recovery < 1 always means "worse than the baseline".

Uncertainty of the delta: a paired bootstrap over the documents both runs scored (same documents
resampled on both sides, each side re-aggregated with lm-eval's own aggregation function), which
removes the between-document variance both runs share; without per-sample data, the two lm-eval
stderrs combined as independent (``sqrt(se_b^2 + se_q^2)``, conservative). The verdict is
"not distinguishable" when the 95% interval of the delta contains 0, and "unknown" when there is no
interval (neither per-sample values nor stderrs): an unmeasured uncertainty is never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ptq_deploy.errors import UsageError
from ptq_deploy.eval.result import EvalResult, EvalSettings, Recovery, TaskResult
from ptq_deploy.stats import Z95, paired_bootstrap


def aggregation_for(metric: str, name: str | None = None) -> Callable[[Sequence[Any]], float] | None:
    """lm-eval's aggregation function for a metric (e.g. mean, weighted_perplexity, bits_per_byte)."""
    from lm_eval.api import registry

    try:
        if name:
            return registry.get_aggregation(name)
        return registry.get_metric_aggregation(metric)
    except Exception:
        return None


def check_settings(baseline: EvalResult, settings: EvalSettings) -> None:
    """Refuse to compare with a baseline produced by another backend or with other settings."""
    if baseline.backend != settings.backend:
        raise UsageError(f"refusing to compare across backends: baseline ran with backend={baseline.backend}, "
                         f"this run with backend={settings.backend} (score both with the same --backend)")
    refuse_different(baseline.settings, settings)


def refuse_different(baseline: EvalSettings, settings: EvalSettings) -> None:
    diff = baseline.differences(settings)
    if diff:
        what = ", ".join(f"{k}: baseline {a!r} vs {b!r}" for k, (a, b) in diff.items())
        raise UsageError(f"refusing to compare runs with different settings ({what})")


def check_comparable(baseline: EvalResult, quantized: EvalResult) -> None:
    check_settings(baseline, quantized.settings)


def _verdict(delta: float, ci: tuple[float, float] | None, higher_is_better: bool) -> str:
    if ci is None:
        return "unknown"
    if ci[0] <= 0 <= ci[1]:
        return "not distinguishable"
    better = delta > 0 if higher_is_better else delta < 0
    return "improved" if better else "regressed"


def compare_task(b: TaskResult, q: TaskResult, metric: str | None = None, iters: int = 1000,
                 seed: int = 0) -> Recovery:
    metric = metric or b.primary_metric()
    if metric not in b.metrics or metric not in q.metrics:
        raise UsageError(f"task {b.task}: metric {metric} missing on one side")
    mb, mq = b.metrics[metric], q.metrics[metric]
    hib = mb.higher_is_better if mb.higher_is_better is not None else True
    delta = mq.value - mb.value
    if hib:
        rec = mq.value / mb.value if mb.value else None
    else:
        rec = mb.value / mq.value if mq.value else None
    stderr, ci, method, n_paired = None, None, "none", None
    agg = aggregation_for(metric, mb.aggregation)
    if iters and agg and b.per_sample and q.per_sample and metric in b.per_sample.values \
            and metric in q.per_sample.values:
        qi = {d: k for k, d in enumerate(q.per_sample.doc_ids)}
        common = [(k, qi[d]) for k, d in enumerate(b.per_sample.doc_ids) if d in qi]
        if len(common) >= 2:
            bv = [b.per_sample.values[metric][k] for k, _ in common]
            qv = [q.per_sample.values[metric][j] for _, j in common]
            stderr, ci = paired_bootstrap(bv, qv, agg, iters=iters, seed=seed)
            method, n_paired = f"paired bootstrap ({iters} resamples)", len(common)
    if stderr is None and mb.stderr is not None and mq.stderr is not None:
        stderr = math.sqrt(mb.stderr ** 2 + mq.stderr ** 2)
        ci = (delta - Z95 * stderr, delta + Z95 * stderr)
        method = "lm-eval stderrs, unpaired"
    return Recovery(task=b.task, metric=metric, baseline=mb.value, quantized=mq.value, delta=delta,
                    recovery=rec, higher_is_better=hib, stderr=stderr, ci95=ci, method=method,
                    n_paired=n_paired, verdict=_verdict(delta, ci, hib))


def compare(baseline: EvalResult, quantized: EvalResult, iters: int = 1000, seed: int = 0) -> list[Recovery]:
    """Per-task recovery of ``quantized`` vs ``baseline`` (refuses incomparable runs)."""
    check_comparable(baseline, quantized)
    common = [t for t in quantized.tasks if t in baseline.tasks]
    if not common:
        raise UsageError(f"baseline {baseline.path or baseline.identity.checkpoint} has none of the tasks "
                         f"{', '.join(quantized.tasks)}")
    out = []
    for t in common:
        b, q = baseline.tasks[t], quantized.tasks[t]
        metrics = [b.primary_metric()]
        if "bits_per_byte" in b.metrics and "bits_per_byte" not in metrics:
            metrics.append("bits_per_byte")
        out.extend(compare_task(b, q, m, iters=iters, seed=seed) for m in metrics if m in q.metrics)
    return out
