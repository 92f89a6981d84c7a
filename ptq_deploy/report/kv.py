"""The leaderboard's KV-cache section, from the ``kv`` step results and the perf results of KV cells.

Per model and scheme measured by a ``kv`` step: one row per method (passkey accuracy, long-document
and generation perplexity with the paired-bootstrap delta vs the baseline cache, agreement with the
baseline's continuation, the bytes the cache held per token, the logit difference on the same input),
the error findings of methods that were not applied (never rows), and a passkey heatmap (depth x length
per method). Where vLLM ran a cell: the KV capacity it allocated in tokens and the sequences of
``context`` tokens that fit at once.
"""

from __future__ import annotations

from pydantic import BaseModel

from ptq_deploy.kvcache.methods import QUALITY_ONLY_NOTE
from ptq_deploy.kvcache.result import Delta, KVResult
from ptq_deploy.report.cells import Cell
from ptq_deploy.report.fmt import MISSING, num
from ptq_deploy.report.row import sig


class KVRow(BaseModel):
    method: str
    quality_only: bool
    backend: str = "transformers"  # where it was measured: vllm (the engine, against auto) | transformers
    passkey_accuracy: float | None
    passkey_n: int
    passkey: dict[str, float]  # "length@depth" -> accuracy
    passkey_delta: Delta | None
    longdoc_ppl: float | None
    longdoc_delta: Delta | None
    generation_ppl: float | None
    generation_delta: Delta | None
    agreement: float | None
    bytes_per_token: float | None
    bytes_ratio: float | None
    logit_max_abs_diff: float | None
    kl: float | None


class KVCapacity(BaseModel):
    cell: str
    kv_cache_dtype: str
    kv_tokens: int
    kv_bytes_per_token: int | None
    context: int
    concurrent_sequences: int


class KVJudgement(BaseModel):
    """One KV method under the weights' non-inferiority rule: per long-context measure, its recovery vs the
    same backend's baseline (95% interval from the paired bootstrap of the delta) and the outcome."""

    method: str
    backend: str
    recovery_pct: dict[str, tuple[float, float | None, float | None]] = {}  # measure -> (r, low, high)
    outcomes: dict[str, str] = {}  # measure -> meets | fails | inconclusive | unmeasured
    overall: str = "unmeasured"


class KVSection(BaseModel):
    model: str
    cell: str
    rows: list[KVRow] = []
    findings: list[str] = []
    capacity: list[KVCapacity] = []
    judged: list[KVJudgement] = []
    recommendation: str | None = None  # the vLLM KV dtype to serve this checkpoint with, and what it buys


def _delta(d: Delta | None) -> Delta | None:
    if d is None:
        return None
    ci = (sig(d.ci95[0]), sig(d.ci95[1])) if d.ci95 else None
    return d.model_copy(update={"baseline": sig(d.baseline), "value": sig(d.value), "delta": sig(d.delta),
                                "stderr": sig(d.stderr, 2) if d.stderr is not None else None, "ci95": ci})


def rows_of(res: KVResult) -> list[KVRow]:
    out = []
    for m in res.methods:
        out.append(KVRow(
            method=m.method, quality_only=m.quality_only, backend=m.backend,
            passkey_accuracy=sig(m.passkey_accuracy.mean) if m.passkey_accuracy else None,
            passkey_n=m.passkey_accuracy.n if m.passkey_accuracy else 0,
            passkey={f"{c.length}@{round(c.depth * 100)}%": sig(c.accuracy) for c in m.passkey},
            passkey_delta=_delta(m.passkey_delta), longdoc_ppl=sig(m.longdoc_ppl), longdoc_delta=_delta(m.longdoc_delta),
            generation_ppl=sig(m.generation_ppl), generation_delta=_delta(m.generation_delta),
            agreement=sig(m.agreement.mean) if m.agreement else None,
            bytes_per_token=sig(m.bytes_per_token.mean) if m.bytes_per_token else None,
            bytes_ratio=sig(m.bytes_ratio), logit_max_abs_diff=sig(m.logit_max_abs_diff.mean) if m.logit_max_abs_diff else None,
            kl=sig(m.kl.mean) if m.kl else None))
    return out


MEASURES = {"passkey": ("passkey_delta", True), "long-doc ppl": ("longdoc_delta", False),
            "gen ppl": ("generation_delta", False)}  # measure -> (delta field, higher is better)


def recovery(d: Delta, higher_is_better: bool) -> tuple[float, float | None, float | None]:
    """candidate / baseline (higher is better) or baseline / candidate (lower is better), in %, with the
    interval the delta's 95% interval maps to."""
    b = d.baseline

    def rec(delta: float) -> float:
        v = b + delta
        if higher_is_better:
            return 100 * v / b if b else float("nan")
        return 100 * b / v if v else float("nan")

    r = rec(d.delta)
    if d.ci95 is None:
        return r, None, None
    a, c = rec(d.ci95[0]), rec(d.ci95[1])
    return r, min(a, c), max(a, c)


def judge(res: KVResult, threshold_pct: float) -> list[KVJudgement]:
    """Every non-baseline row, each measure tested as the weights' tasks are (``noninferiority.outcome``)."""
    out = []
    for m in res.methods:
        if m.method in ("none", "auto"):
            continue
        j = KVJudgement(method=m.method, backend=m.backend)
        for name, (field, hib) in MEASURES.items():
            d = getattr(m, field)
            if d is None:
                continue
            r, lo, hi = recovery(d, hib)
            j.recovery_pct[name] = (sig(r), sig(lo) if lo is not None else None, sig(hi) if hi is not None else None)
            lo, hi = j.recovery_pct[name][1:]
            j.outcomes[name] = ("meets" if lo is not None and lo >= threshold_pct else
                                "fails" if hi is not None and hi < threshold_pct else "inconclusive")
        outs = set(j.outcomes.values())
        j.overall = ("fails" if "fails" in outs else "inconclusive" if "inconclusive" in outs else
                     "meets" if outs else "unmeasured")
        out.append(j)
    return out


def recommend(res: KVResult, judged: list[KVJudgement], threshold_pct: float) -> str | None:
    """The servable (vLLM) KV dtype to use: of those meeting the rule on every measure, the one whose cache
    holds the most tokens; with what it buys against auto. None when no vLLM row was measured."""
    rows = {m.method: m for m in res.methods}
    base = rows.get("auto")
    served = [j for j in judged if j.backend == "vllm"]
    if base is None or not served:
        return None
    ok = [j for j in served if j.overall == "meets"]
    if not ok:
        why = "; ".join(f"{j.method} {j.overall} ({', '.join(f'{k} {v}' for k, v in j.outcomes.items())})"
                        for j in served)
        return f"auto: no vLLM KV dtype meets recovery ≥ {num(threshold_pct)}% on every long-context measure ({why})"
    pick = max(ok, key=lambda j: (rows[j.method].cost.capacity_tokens or 0) if rows[j.method].cost else 0)
    m = rows[pick.method]
    buys = []
    if m.cost and base.cost and m.cost.capacity_tokens and base.cost.capacity_tokens:
        buys.append(f"{num(sig(m.cost.capacity_tokens / base.cost.capacity_tokens))}× the KV tokens "
                    f"({num(m.cost.capacity_tokens)} vs {num(base.cost.capacity_tokens)})")
        longest = max(m.cost.decode_ms_per_token, default=None)
        if longest and longest in base.cost.decode_ms_per_token:
            a, b = m.cost.decode_ms_per_token[longest], base.cost.decode_ms_per_token[longest]
            buys.append(f"decode at {num(longest)} tokens {num(sig(a.median))} vs {num(sig(b.median))} ms/token "
                        f"(median of {a.n})")
    return (f"{pick.method}: meets recovery ≥ {num(threshold_pct)}% on "
            f"{', '.join(pick.outcomes)}" + (f"; buys {'; '.join(buys)}" if buys else ""))


def capacity(cells: list[Cell]) -> list[KVCapacity]:
    out = []
    for c in cells:
        perf = c.results.get("perf")
        mem = getattr(perf, "memory", None)
        if mem is None or not mem.kv_cache_tokens or perf.engine is None:
            continue
        ctx = perf.engine.settings.max_model_len
        out.append(KVCapacity(cell=c.cell, kv_cache_dtype=perf.engine.kv_cache_dtype, kv_tokens=mem.kv_cache_tokens,
                              kv_bytes_per_token=mem.kv_bytes_per_token, context=ctx,
                              concurrent_sequences=mem.kv_cache_tokens // ctx))
    return out


def sections(cells: list[Cell], baseline: str, threshold_pct: float = 99.0) -> list[KVSection]:
    """One section per cell with a ``kv`` result, with its model's vLLM KV capacities (the cell's own and
    every KV cell's), each method judged at ``threshold_pct`` and a vLLM KV dtype recommended; a model with KV
    cells but no ``kv`` result gets a capacity-only section."""
    out = []
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        kv_cells = [c for c in mine if c.kv_cache != "none"]
        for c in mine:
            res = c.results.get("kv")
            if res is not None:
                judged = judge(res, threshold_pct)
                out.append(KVSection(model=model, cell=c.cell, rows=rows_of(res),
                                     findings=[f"{f.severity}: {f.message}" for f in res.findings],
                                     capacity=capacity([c, *kv_cells]), judged=judged,
                                     recommendation=recommend(res, judged, threshold_pct)))
        if kv_cells and not any(s.model == model for s in out):
            base = [c for c in mine if c.cell == baseline]
            cap = capacity([*base, *kv_cells])
            if cap:
                out.append(KVSection(model=model, cell=baseline, capacity=cap))
    return out


# ---------------------------------------------------------------- tables
def _d(d: Delta | None) -> str:
    if d is None:
        return MISSING
    ci = f" ({num(d.ci95[0], True)}–{num(d.ci95[1], True)})" if d.ci95 else ""
    return f"{num(d.delta, True)}{ci} {d.verdict}"


HEADERS = ("method", "in", "passkey acc (n)", "Δ acc (95% CI)", "long-doc ppl", "Δ long-doc ppl (95% CI)", "gen ppl",
           "Δ gen ppl (95% CI)", "agreement", "KV B/token (× baseline)", "max abs Δ logit", "KL (nats)")


def table(sec: KVSection) -> list[list[str]]:
    return [[r.method + (" *" if r.quality_only else ""), "vLLM" if r.backend == "vllm" else "HF",
             f"{num(r.passkey_accuracy)} ({r.passkey_n})",
             _d(r.passkey_delta), num(r.longdoc_ppl), _d(r.longdoc_delta), num(r.generation_ppl),
             _d(r.generation_delta), num(r.agreement), f"{num(r.bytes_per_token)} ({num(r.bytes_ratio)}×)",
             num(r.logit_max_abs_diff), num(r.kl)] for r in sec.rows]


JUDGE_HEADERS = ("method", "in", *(f"{k} recovery % (95% CI)" for k in MEASURES), "outcome")


def judge_table(sec: KVSection) -> list[list[str]]:
    def cell(j: KVJudgement, k: str) -> str:
        if k not in j.recovery_pct:
            return MISSING
        r, lo, hi = j.recovery_pct[k]
        ci = f" ({num(lo)}–{num(hi)})" if lo is not None else ""
        return f"{num(r)}{ci} {j.outcomes[k]}"

    return [[j.method, "vLLM" if j.backend == "vllm" else "HF", *(cell(j, k) for k in MEASURES), j.overall]
            for j in sec.judged]


CAP_HEADERS = ("cell", "vLLM KV dtype", "KV capacity (tokens)", "KV B/token", "context (tokens)", "sequences of that context at once")


def cap_table(sec: KVSection) -> list[list[str]]:
    return [[c.cell, c.kv_cache_dtype, num(c.kv_tokens), num(c.kv_bytes_per_token), num(c.context),
             num(c.concurrent_sequences)] for c in sec.capacity]


LEGEND = (f"KV cache: * = {QUALITY_ONLY_NOTE}. in: vLLM = a kv_cache_dtype measured in the engine against its auto "
          "cache (prompt logprobs; the scored tokens read the engine's paged cache; KV B/token = the memory vLLM "
          "gave the cache / the tokens it holds); HF = measured in transformers against its unquantized cache: every "
          "sample is prefilled once at full precision, each method then holds that cache in its own form and every "
          "later token reads it. Passkey: "
          "a 5-digit key at 10-90% depth; long-doc ppl: the last tokens of whole chapters, scored in chunks that "
          "attend to the cache; gen ppl: the method's greedy continuation scored by the baseline (agreement: share "
          "of tokens equal to the baseline's own continuation). Δ: method − baseline with the 95% interval of a "
          "paired bootstrap over samples. KV B/token (HF): bytes the cache object held per cached token (measured), "
          "× the baseline's. max abs Δ logit, KL: first forward after the prefill vs the unquantized cache (vLLM: "
          "max abs Δ logprob of the same tokens; no KL).")


def _md_table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(secs: list[KVSection], plots: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for s in secs:
        lines += [f"## KV cache: {s.model}, {s.cell} (baseline: the unquantized cache of the same backend)", ""]
        if s.rows:
            lines += ["### KV-cache methods", "", *_md_table(HEADERS, table(s)), ""]
        if s.judged:
            lines += ["### KV methods against the recovery rule", "", *_md_table(JUDGE_HEADERS, judge_table(s)), ""]
        if s.recommendation:
            lines += [f"**KV recommendation**: {s.recommendation}", ""]
        if s.findings:
            lines += ["Findings (not rows):", "", *(f"- {f}" for f in s.findings), ""]
        if s.capacity:
            lines += ["### vLLM KV capacity", "", *_md_table(CAP_HEADERS, cap_table(s)), ""]
        if heatmap_name(s) in plots:
            lines += [f"![{heatmap_name(s)}]({plots[heatmap_name(s)]})", ""]
    if secs:
        lines += [LEGEND, ""]
    return lines


# ---------------------------------------------------------------- heatmap
def heatmap_name(sec: KVSection) -> str:
    return f"kv_passkey_{sec.model}_{sec.cell}".replace("/", "-")


def heatmap(sec: KVSection) -> bytes | None:
    """Passkey accuracy, one panel per method: depth (rows) x context length (columns)."""
    import io

    import numpy as np
    from matplotlib.figure import Figure

    rows = [r for r in sec.rows if r.passkey]
    if not rows:
        return None
    keys = sorted({k for r in rows for k in r.passkey}, key=lambda k: (int(k.split("@")[0]), int(k[:-1].split("@")[1])))
    lengths = sorted({int(k.split("@")[0]) for k in keys})
    depths = sorted({int(k[:-1].split("@")[1]) for k in keys})
    fig = Figure(figsize=(2.2 * len(rows) + 1, 0.45 * len(depths) + 1.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    im = None
    for ax, r in zip(axes, rows):
        grid = np.array([[r.passkey.get(f"{n}@{d}%", np.nan) for n in lengths] for d in depths])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=8)
        ax.set_title(r.method + (" *" if r.quality_only else ""), fontsize=9)
        ax.set_xlabel("context tokens", fontsize=8)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7)
    axes[0].set_ylabel("key depth", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="passkey accuracy")
    fig.suptitle(f"{sec.model} ({sec.cell}): passkey accuracy by depth x context length", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
