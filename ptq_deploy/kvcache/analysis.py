"""From per-sample values to a method's row: passkey cells, perplexities, paired deltas vs the baseline,
and the findings that keep a method out of the rows (outputs bit-identical to the baseline's, or a cache
that is no smaller)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ptq_deploy.kvcache.longctx import PasskeySample
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import Delta, KVFinding, MethodResult, PasskeyCell, Samples
from ptq_deploy.stats import Summary, paired_bootstrap


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ppl(pairs: Sequence[Sequence[float]]) -> float:
    """Perplexity over documents: exp(total NLL / total tokens)."""
    tokens = sum(n for _, n in pairs)
    return math.exp(sum(nll for nll, _ in pairs) / tokens) if tokens else math.nan


def delta(base: dict, cand: dict, agg: Callable, higher_is_better: bool, iters: int, seed: int) -> Delta | None:
    """Paired bootstrap of ``agg(cand) - agg(base)`` over the sample ids both hold."""
    ids = [k for k in base if k in cand]
    if not ids:
        return None
    b, c = [base[k] for k in ids], [cand[k] for k in ids]
    vb, vc = agg(b), agg(c)
    stderr, ci = None, None
    if iters and len(ids) >= 2:
        stderr, ci = paired_bootstrap(b, c, agg, iters=iters, seed=seed)
    d = vc - vb
    if ci is None:
        verdict = "unknown"
    elif ci[0] <= 0 <= ci[1]:
        verdict = "not distinguishable"
    else:
        verdict = "improved" if (d > 0) == higher_is_better else "regressed"
    return Delta(baseline=vb, value=vc, delta=d, stderr=stderr, ci95=ci, n=len(ids), verdict=verdict)


def passkey_cells(items: Sequence[PasskeySample], correct: dict[str, bool]) -> list[PasskeyCell]:
    cells: dict[tuple[int, float], PasskeyCell] = {}
    for it in items:
        if it.id in correct:
            c = cells.setdefault((it.length, it.depth), PasskeyCell(length=it.length, depth=it.depth, n=0, correct=0))
            c.n += 1
            c.correct += int(correct[it.id])
    return sorted(cells.values(), key=lambda c: (c.length, c.depth))


def method_row(m: KVMethod, s: Samples, items: Sequence[PasskeySample], buffers: dict[str, float],
               wall_s: float) -> MethodResult:
    def summ(d: dict, unit: str = "") -> Summary | None:
        return Summary.of(list(d.values()), unit) if d else None

    return MethodResult(
        method=m.name, family=m.family, description=m.description, params=m.params(), quality_only=m.quality_only,
        passkey=passkey_cells(items, s.passkey),
        passkey_accuracy=summ({k: float(v) for k, v in s.passkey.items()}),
        longdoc_ppl=ppl(list(s.longdoc.values())) if s.longdoc else None,
        generation_ppl=ppl(list(s.generation.values())) if s.generation else None,
        agreement=summ(s.agreement), bytes_per_token=summ(s.bytes_per_token, "B"),
        buffer_bytes_per_token=summ(buffers, "B"), logit_max_abs_diff=summ(s.logit_max_abs),
        logit_mean_abs_diff=summ(s.logit_mean_abs), kl=summ(s.kl, "nats"),
        identical_samples=sum(s.identical.values()), wall_time_s=wall_s, samples=s)


def compare(row: MethodResult, base: MethodResult, iters: int, seed: int) -> MethodResult:
    """``row`` with its deltas vs ``base`` and its bytes ratio."""
    bs, s = base.samples, row.samples
    acc = {k: float(v) for k, v in s.passkey.items()}
    bacc = {k: float(v) for k, v in bs.passkey.items()}
    ratio = None
    if row.bytes_per_token and base.bytes_per_token and base.bytes_per_token.mean:
        ratio = row.bytes_per_token.mean / base.bytes_per_token.mean
    return row.model_copy(update={
        "bytes_ratio": ratio,
        "passkey_delta": delta(bacc, acc, mean, True, iters, seed),
        "longdoc_delta": delta(bs.longdoc, s.longdoc, ppl, False, iters, seed),
        "generation_delta": delta(bs.generation, s.generation, ppl, False, iters, seed)})


def findings(row: MethodResult) -> list[KVFinding]:
    """Error findings when the method was not applied: its outputs equal the baseline's bit for bit on
    every sample, or its cache holds no fewer bytes per token."""
    out = []
    n = len(row.samples.identical)
    if n and row.identical_samples == n:
        out.append(KVFinding(severity="error", method=row.method, message=(
            f"{row.method}: logits bit-identical to the unquantized cache on all {n} samples: the method was not "
            "applied (not a row)")))
    elif row.identical_samples:
        out.append(KVFinding(severity="warning", method=row.method, message=(
            f"{row.method}: logits bit-identical to the unquantized cache on {row.identical_samples} of {n} samples")))
    if row.bytes_ratio is not None and row.bytes_ratio >= 1.0:
        out.append(KVFinding(severity="error", method=row.method, message=(
            f"{row.method}: the cache holds {row.bytes_per_token.mean:.0f} B/token, {row.bytes_ratio:.2f}x the "
            "baseline's: no smaller (not a row)")))
    return out
