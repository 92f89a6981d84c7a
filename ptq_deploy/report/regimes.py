"""Serving regimes: which variant wins depends on how it is served (``ReportSettings.slo``, ``capacity_context``).

Every regime is decided among the same candidates as the recommendation: the deployable cells that *meet*
every quality measure (the baseline included).

- **interactive**: the lowest batch-1 latency, the mean time of one request served alone (perf's offline
  batch-1 requests, with their 95% interval; else the serving curve's concurrency 1);
- **throughput**, per workload shape: the highest output tok/s at a load whose p99 latencies meet the targets
  (``slo``: ttft / tpot / e2el ms), read from perf's load sweep (``vllm serve`` + vLLM's benchmark client);
  without targets, the peak of the curve;
- **capacity**: the most concurrent sequences of ``capacity_context`` tokens whose KV cache fits in what vLLM
  allocated; ties go to the smaller weights (the room a device has left for more KV cache).

Each regime names its winner and by how much it beats the baseline. When the baseline wins, it still names
the best quantized variant and what it costs; quality-meeting schemes that could not be timed here are
listed with what they save. Crossovers: per shape, the loads at which a scheme's output tok/s crosses the
baseline's (the same concurrency levels, one pass each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from ptq_deploy.perf.serving import breaks
from ptq_deploy.report.cells import Cell
from ptq_deploy.report.fmt import num
from ptq_deploy.report.row import Row, err, perf_missing, sig
from ptq_deploy.stats import Z95

Regime = Literal["interactive", "throughput", "capacity"]


class Point(BaseModel):
    """One serving level (one timed pass of ``requests`` requests at ``concurrency``)."""

    concurrency: int
    requests: int
    output_tok_s: float
    request_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    e2el_p99_ms: float | None
    breaks: list[str] = []  # the latency targets this level misses (empty: meets them, or none were set)


class Curve(BaseModel):
    model: str
    cell: str
    shape: str
    input_len: int | None
    output_len: int | None
    points: list[Point]  # lowest concurrency first
    stopped: str

    def best(self) -> Point | None:
        """The highest-throughput level that meets the latency targets."""
        return max((p for p in self.points if not p.breaks), key=lambda p: p.output_tok_s, default=None)

    def shape_label(self) -> str:
        return f"{self.shape} ({self.input_len} in / {self.output_len} out)" if self.input_len else self.shape


class Batch1(BaseModel):
    """The mean time of one request served alone, ms, with its standard error."""

    mean_ms: float
    stderr_ms: float | None
    n: int
    source: str


class Standing(BaseModel):
    cell: str
    value: float
    stderr: float | None = None
    detail: str = ""  # e.g. "at concurrency 8"


class RegimeResult(BaseModel):
    regime: Regime
    shape: str | None = None  # throughput: the workload shape
    measure: str  # what is compared, with its unit
    higher_is_better: bool
    standings: list[Standing]  # candidates, best first
    winner: str | None
    best_quantized: str | None = None  # when the baseline wins: the best quantized variant
    text: str  # one sentence: who wins, by how much, with the uncertainty


class Regimes(BaseModel):
    slo_ms: dict[str, float] = {}  # p99 targets the throughput regime meets
    capacity_context: int
    curves: list[Curve] = []
    results: list[RegimeResult] = []
    crossovers: list[str] = []  # one line per shape x scheme
    untimed: list[str] = []  # quality-meeting schemes with no speed numbers here, with what they save


# ---------------------------------------------------------------- reading the perf results
def _point(lv, slo: dict[str, float]) -> Point:
    def pct(s, q):
        return sig(getattr(s, q)) if s.n else None

    return Point(concurrency=lv.concurrency, requests=lv.completed, output_tok_s=sig(lv.output_throughput),
                 request_s=sig(lv.request_throughput), ttft_p50_ms=pct(lv.ttft_ms, "median"),
                 ttft_p99_ms=pct(lv.ttft_ms, "p99"), tpot_p50_ms=pct(lv.tpot_ms, "median"),
                 tpot_p99_ms=pct(lv.tpot_ms, "p99"), e2el_p99_ms=pct(lv.e2el_ms, "p99"), breaks=breaks(lv, slo))


def curves(cells: Sequence[Cell], slo: dict[str, float]) -> list[Curve]:
    out = []
    for c in cells:
        perf = c.results.get("perf")
        if perf is None or perf.serving is None:
            continue
        for cv in perf.serving.curves:
            pts = sorted((_point(lv, slo) for lv in cv.levels if lv.completed), key=lambda p: p.concurrency)
            if pts:
                out.append(Curve(model=c.model, cell=c.cell, shape=cv.shape, input_len=cv.input_len,
                                 output_len=cv.output_len, points=pts, stopped=cv.stopped))
    return out


def batch1(cells: Sequence[Cell]) -> dict[str, Batch1]:
    """Per cell (of one model), its batch-1 latency."""
    out = {}
    for c in cells:
        perf = c.results.get("perf")
        lat = perf.latency if perf is not None else None
        if lat is not None and lat.batch1_e2e.n:
            s = lat.batch1_e2e
            se = s.stdev / math.sqrt(s.n) * 1e3 if s.n > 1 else None
            out[c.cell] = Batch1(mean_ms=s.mean * 1e3, stderr_ms=se, n=s.n,
                                          source=f"offline batch-1 requests ({perf.workload.input_len} in / "
                                                 f"{perf.workload.output_len} out)")
        elif perf is not None and perf.serving is not None and perf.serving.curves:
            cv = perf.serving.curves[0]
            lv = next((lv for lv in cv.levels if lv.concurrency == 1 and lv.e2el_ms.n), None)
            if lv is not None:
                se = lv.e2el_ms.stdev / math.sqrt(lv.e2el_ms.n) if lv.e2el_ms.n > 1 else None
                out[c.cell] = Batch1(mean_ms=lv.e2el_ms.mean, stderr_ms=se, n=lv.e2el_ms.n,
                                              source=f"serving, concurrency 1, shape {cv.shape}")
    return out


# ---------------------------------------------------------------- deciding
def _ratio(a: Standing, b: Standing) -> str:
    """``a / b`` with its 95% interval where both have a standard error (delta method)."""
    r = a.value / b.value
    if a.stderr is None or b.stderr is None:
        return f"{num(sig(r))}x"
    rel = math.sqrt((a.stderr / a.value) ** 2 + (b.stderr / b.value) ** 2)
    lo, hi = sig(r * (1 - Z95 * rel)), sig(r * (1 + Z95 * rel))
    return f"{num(sig(r))}x (95% CI {num(lo)}–{num(hi)})"


def _decide(regime: Regime, measure: str, unit: str, higher: bool, standings: list[Standing], base: str,
            rows: dict[str, Row], shape: str | None = None, tiebreak=None, note: str = "") -> RegimeResult:
    standings.sort(key=lambda s: ((-s.value if higher else s.value), *(tiebreak(s) if tiebreak else ()), s.cell))
    if not standings:
        return RegimeResult(regime=regime, shape=shape, measure=measure, higher_is_better=higher, standings=[],
                            winner=None, text=f"no quality-meeting scheme has {measure} here{note}")
    w = standings[0]
    b = next((s for s in standings if s.cell == base), None)

    def fig(s: Standing) -> str:
        return f"{num(sig(s.value))}{unit}" + (f" ± {num(err(s.stderr))}" if s.stderr is not None else "") \
            + (f" {s.detail}" if s.detail else "")

    text = f"{w.cell}: {fig(w)}"
    best_q = None
    if w.cell == base:
        q = next((s for s in standings if s.cell != base), None)
        text += " (the baseline)"
        if q is not None:
            best_q = q.cell
            size = rows[q.cell].weights_gb
            text += (f"; best quantized: {q.cell}, {fig(q)}, {_ratio(q, w)} the baseline's"
                     + (f", at {num(size)} GB of weights vs {num(rows[base].weights_gb)} GB" if size is not None
                        and rows[base].weights_gb is not None else ""))
        else:
            text += "; no quantized scheme meeting the quality rule has this measure"
    elif b is not None:
        text += f", {_ratio(w, b)} the baseline's {fig(b)}"
    else:
        text += " (the baseline has no such measure)"
    return RegimeResult(regime=regime, shape=shape, measure=measure, higher_is_better=higher, standings=standings,
                        winner=w.cell, best_quantized=best_q, text=text + note)


def crossovers(cvs: Sequence[Curve], base: str) -> list[str]:
    """Per shape and scheme: where its throughput crosses the baseline's, at the levels both measured."""
    out = []
    by = {(c.shape, c.cell): c for c in cvs}
    for c in cvs:
        b = by.get((c.shape, base))
        if c.cell == base or b is None:
            continue
        bt = {p.concurrency: p.output_tok_s for p in b.points}
        pairs = [(p.concurrency, p.output_tok_s / bt[p.concurrency] - 1) for p in c.points
                 if bt.get(p.concurrency)]
        if not pairs:
            continue
        lo, hi = pairs[0][0], pairs[-1][0]
        gains = ", ".join(f"{k}: {d:+.0%}" for k, d in pairs)
        flips = [k for (_, d0), (k, d1) in zip(pairs, pairs[1:]) if (d0 > 0) != (d1 > 0)]
        if not flips:
            word = "faster" if pairs[0][1] > 0 else "slower"
            span = f"concurrency {lo}" if lo == hi else f"concurrency {lo}–{hi}"
            out.append(f"{c.shape}: {c.cell} is {word} than {base} at every load measured "
                       f"({span}; {gains}): no crossover in that range")
        else:
            turns = "; ".join(f"{'slower' if dict(pairs)[k] < 0 else 'faster'} from concurrency {k}" for k in flips)
            out.append(f"{c.shape}: {c.cell} crosses {base}: {turns} ({gains})")
    return out


def regimes(rows: Sequence[Row], cells: Sequence[Cell], base: str, slo: dict[str, float],
            capacity_context: int) -> Regimes:
    """The three regimes for one model's judged rows (``leaderboard``) and its cells' perf results."""
    model = rows[0].model if rows else ""
    cand = {r.cell: r for r in rows if not r.quality_only and r.quality in ("meets", "baseline")}
    mine = [c for c in cells if c.model == model]
    cvs = curves(mine, slo)
    b1 = batch1(mine)
    res = []

    inter = [Standing(cell=k, value=v.mean_ms, stderr=v.stderr_ms, detail=f"(n={v.n})")
             for k, v in b1.items() if k in cand]
    src = "; ".join(sorted({v.source for k, v in b1.items() if k in cand}))
    res.append(_decide("interactive", "batch-1 latency per request", " ms", False, inter, base, cand,
                       note=f" [{src}]" if src else ""))

    slo_txt = ", ".join(f"{k} p99 ≤ {v:g} ms" for k, v in slo.items())
    for shape in dict.fromkeys(c.shape for c in cvs):
        st, label = [], next(c.shape_label() for c in cvs if c.shape == shape)
        for c in (c for c in cvs if c.shape == shape and c.cell in cand):
            p = c.best()  # without targets no level misses one: the peak
            if p is not None:
                st.append(Standing(cell=c.cell, value=p.output_tok_s,
                                   detail=f"at concurrency {p.concurrency} ({p.requests} requests, one pass)"))
        what = f"output tok/s within {slo_txt}" if slo else "peak output tok/s (no latency targets set)"
        res.append(_decide("throughput", what, " tok/s", True, st, base, cand, shape=label))

    def seqs(r: Row) -> int | None:
        return r.kv_tokens // capacity_context if r.kv_tokens else None

    cap = [Standing(cell=r.cell, value=float(n), detail=f"at {capacity_context} tokens, {num(r.weights_gb)} GB weights")
           for r in cand.values() if (n := seqs(r)) is not None]
    cap_res = _decide("capacity", f"sequences of {capacity_context} tokens in vLLM's KV cache", "", True, cap, base,
                      cand, tiebreak=lambda s: (cand[s.cell].weights_gb or math.inf,))
    if len({s.value for s in cap}) == 1 and len(cap) > 1:
        cap_res.text += " (every candidate fits as many: the smaller weights decide, leaving the most room)"
    res.append(cap_res)

    untimed = []
    bw = cand[base].weights_gb if base in cand else None
    for r in cand.values():
        if r.baseline or r.throughput_tok_s is not None or any(c.cell == r.cell for c in cvs):
            continue
        save = (f" ({(r.weights_gb / bw - 1):+.0%} vs {base}'s {num(bw)} GB)" if r.weights_gb and bw else "")
        untimed.append(f"{r.cell}: meets the quality rule at {num(r.weights_gb)} GB of weights{save}; "
                       f"speed not measured here ({perf_missing(r)})")
    return Regimes(slo_ms=dict(slo), capacity_context=capacity_context, curves=cvs, results=res,
                   crossovers=crossovers(cvs, base), untimed=untimed)


# ---------------------------------------------------------------- rendering
def curve_frame(rg: Regimes):
    """The load curves as one table: per scheme x shape, output tok/s at each concurrency (TPOT p99 ms in
    brackets, ✗ where a latency target is missed) and why the sweep stopped."""
    import pandas as pd

    levels = sorted({p.concurrency for c in rg.curves for p in c.points})
    rows = []
    for c in rg.curves:
        at = {p.concurrency: p for p in c.points}
        rows.append([c.cell, c.shape_label(),
                     *(f"{num(at[k].output_tok_s)} ({num(at[k].tpot_p99_ms)})" + (" ✗" if at[k].breaks else "")
                       if k in at else "–" for k in levels), c.stopped])
    return pd.DataFrame(rows, columns=["scheme", "shape", *(f"c={k}" for k in levels), "sweep stopped"])


def points_frame(rg: Regimes):
    """Every measured level, one row each (the CSV a pandas user loads)."""
    import pandas as pd

    return pd.DataFrame([{"model": c.model, "cell": c.cell, "shape": c.shape, "input_len": c.input_len,
                          "output_len": c.output_len, **p.model_dump(exclude={"breaks"}),
                          "meets_slo": not p.breaks, "breaks": "; ".join(p.breaks)} for c in rg.curves for p in c.points])


def lines(rg: Regimes, slo_text: str) -> list[str]:
    """The regimes section as Markdown lines (the HTML page and the console reuse the same sentences)."""
    out = [f"Latency targets (p99): {slo_text}. Candidates: the schemes meeting the quality rule, the baseline "
           "included. Throughput per level is one timed pass of its requests (n in the curve data).", ""]
    out += ["| regime | shape | measure | winner |", "|---|---|---|---|"]
    for r in rg.results:
        out.append(f"| {r.regime} | {r.shape or '–'} | {r.measure} | {r.text} |")
    out.append("")
    if rg.crossovers:
        out += ["Crossovers (output tok/s vs the baseline at the same concurrency):", "",
                *(f"- {x}" for x in rg.crossovers), ""]
    if rg.untimed:
        out += ["Meet the quality rule but have no speed numbers here:", "", *(f"- {x}" for x in rg.untimed), ""]
    if rg.curves:
        out += ["Load curves: output tok/s at each concurrency c (TPOT p99 ms); ✗: a latency target missed.", "",
                curve_frame(rg).to_markdown(index=False, tablefmt="github", disable_numparse=True), ""]
    return out
