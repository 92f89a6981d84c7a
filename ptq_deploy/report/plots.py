"""PNG plots of a ``Report`` (matplotlib, Agg; no pyplot state), led by what separates the schemes:

- ``quality_vs_throughput``: the worst recovery across tasks (with that task's 95% interval) against
  output tokens/s, with the Pareto front computed on those two; one panel per model;
- ``recovery_by_task``: one panel per model x task, every scheme's recovery with its interval and the
  task's minimum recovery, coloured by outcome: where the tasks disagree it shows;
- ``quality_vs_size``: the worst recovery against weight size, so schemes without speed numbers appear;
- ``latency_percentiles``: TTFT and TPOT p50 / p99 per scheme;
- ``serving_curves`` (when perf ran the load sweep): output tok/s against TPOT p50 at each concurrency, one
  line per scheme, one panel per model x workload shape, as vLLM's sweep plots (throughput vs latency: up and
  left is better), each point labelled with its concurrency;
- ``bitwidth_curve`` (when the results hold weight-only methods at several bit widths): word perplexity and
  accuracy against bits per weight (codes + scales), one line per method (RTN, GPTQ, AWQ; POT, APOT dashed:
  quality only), 95% intervals (± 1.96 standard errors), the baseline as a band.

A cell without the figures a plot needs is left out of that plot; a plot with no data at all says so.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from ptq_deploy.report.fmt import num
from ptq_deploy.report.leaderboard import Leaderboard, Report
from ptq_deploy.report.row import Row
from ptq_deploy.stats import Z95

PLOTS = ("quality_vs_throughput", "recovery_by_task", "quality_vs_size", "latency_percentiles")
OPTIONAL = ("bitwidth_curve", "serving_curves")  # drawn when the results hold what it needs (``has_curve``)
COLOURS = {"baseline": "black", "meets": "tab:green", "fails": "tab:red", "inconclusive": "tab:orange",
           "unmeasured": "grey", None: "grey"}


def _figure(cols: int, rows: int = 1, width: float = 6.0, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} measured", ha="center", va="center", transform=ax.transAxes, color="grey")


def _bar(v: float | None, lo: float | None, hi: float | None) -> list[list[float]] | None:
    """Asymmetric error bar of ``v`` within ``[lo, hi]`` (None unless both are known)."""
    return [[v - lo], [hi - v]] if None not in (v, lo, hi) else None


def worst_scatter(ax, lb: Leaderboard, x: Callable[[Row], float | None], xerr: Callable[[Row], float | None]):
    """Each row with ``x`` and a worst recovery, coloured by outcome (one legend entry per outcome)."""
    pts = [r for r in lb.rows if x(r) is not None and r.worst_recovery_pct is not None]
    seen: set[str | None] = set()
    for i, r in enumerate(pts):
        ax.errorbar(x(r), r.worst_recovery_pct, xerr=xerr(r),
                    yerr=_bar(r.worst_recovery_pct, r.worst_recovery_low_pct, r.worst_recovery_high_pct),
                    fmt="s" if r.baseline else "o", ms=8, capsize=3, color=COLOURS[r.quality],
                    label=r.quality if r.quality not in seen else "_nolegend_")
        seen.add(r.quality)
        # a leader line from each label to its own point: labels of neighbouring points never swap
        ax.annotate(r.cell, (x(r), r.worst_recovery_pct), textcoords="offset points",
                    xytext=(10, 14 if i % 2 else -18), fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "grey"})
    return pts


def _reference_lines(ax, lb: Leaderboard) -> str:
    """100% and the minimum recovery of the tasks that are worst; returns a title suffix naming them."""
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    worst = {r.worst_task: r.tasks[r.worst_task].min_recovery_pct for r in lb.rows
             if not r.baseline and r.worst_task in r.tasks}
    for t in sorted(set(worst.values()) - {None}):
        tasks = ", ".join(k for k, v in worst.items() if v == t)
        ax.axhline(t, color="tab:red", lw=0.8, ls="--", label=f"min recovery {num(t)}% ({tasks})")
    return f" (worst: {', '.join(worst)})" if worst else ""


def _worst_panel(ax, lb: Leaderboard, pts: list[Row], *, what: str, title: str, xlabel: str, legend: str) -> None:
    """A worst-recovery scatter's reference lines, legend (or the no-data text), title and axes."""
    worst = _reference_lines(ax, lb) if pts else ""
    if pts:
        ax.legend(fontsize=7, loc=legend)
    else:
        _no_data(ax, what)
    ax.set(title=f"{lb.model}: {title}{worst}", xlabel=xlabel,
           ylabel=f"worst recovery across tasks vs {lb.baseline} (%, 95% CI)")
    ax.grid(alpha=0.3)


def quality_vs_throughput(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes[0], rep.leaderboards):
        pts = worst_scatter(ax, lb, lambda r: r.throughput_tok_s, lambda r: r.throughput_tok_s_stdev)
        front = sorted((r for r in pts if r.pareto), key=lambda r: r.throughput_tok_s)
        if len(front) > 1:
            ax.step([r.throughput_tok_s for r in front], [r.worst_recovery_pct for r in front], where="pre",
                    ls="--", color="black", lw=1, label="Pareto front")
        _worst_panel(ax, lb, pts, what="recovery and throughput", title="quality loss vs throughput",
                     xlabel="output tokens/s (offline)", legend="lower left")
    return _png(fig)


def quality_vs_size(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes[0], rep.leaderboards):
        pts = worst_scatter(ax, lb, lambda r: r.weights_gb, lambda r: None)
        _worst_panel(ax, lb, pts, what="weights and recovery", title="quality loss vs weight size",
                     xlabel="weights (GB)", legend="lower right")
    return _png(fig)


def _task_panel(ax, lb: Leaderboard, task: str) -> None:
    rows = [r for r in lb.rows if task in r.tasks and r.tasks[task].recovery_pct is not None]
    for y, r in enumerate(rows):
        ts = r.tasks[task]
        ax.errorbar(ts.recovery_pct, y, xerr=_bar(ts.recovery_pct, ts.recovery_low_pct, ts.recovery_high_pct),
                    fmt="s" if r.baseline else "o", ms=6, capsize=3, color=COLOURS[ts.outcome])
    ax.set_yticks(range(len(rows)), [r.cell for r in rows], fontsize=8)
    ax.invert_yaxis()
    thresholds = {r.tasks[task].min_recovery_pct for r in rows} - {None}
    if rows:
        ax.axvline(100, color="grey", lw=0.8, ls=":")
        for t in thresholds:
            ax.axvline(t, color="tab:red", lw=0.8, ls="--", label=f"min {num(t)}%")
        if thresholds:
            ax.legend(fontsize=7, loc="lower left")
    else:
        _no_data(ax, f"{task} recovery")
    metric = next((r.tasks[task].metric for r in lb.rows if task in r.tasks), "")
    ax.set(title=f"{lb.model}: {task} ({metric})", xlabel=f"recovery vs {lb.baseline} (%, 95% interval)")
    ax.grid(alpha=0.3, axis="x")


def recovery_by_task(rep: Report) -> bytes:
    n_tasks = max([len(lb.tasks) for lb in rep.leaderboards] + [1])
    fig, axes = _figure(n_tasks, len(rep.leaderboards), width=5.0, height=4.0)
    for row_axes, lb in zip(axes, rep.leaderboards):
        for i, ax in enumerate(row_axes):
            if i < len(lb.tasks):
                _task_panel(ax, lb, lb.tasks[i])
            else:
                _no_data(ax, "task")
                ax.set_axis_off()
    return _png(fig)


def _latency_panel(ax, lb: Leaderboard) -> None:
    import numpy as np

    series = [("TTFT p50", "ttft_p50_ms"), ("TTFT p99", "ttft_p99_ms"), ("TPOT p50", "tpot_p50_ms"),
              ("TPOT p99", "tpot_p99_ms")]
    rows = [r for r in lb.rows if any(getattr(r, f) is not None for _, f in series)]
    if not rows:
        _no_data(ax, "latency")
    x = np.arange(len(rows))
    w = 0.8 / len(series)
    for i, (label, field) in enumerate(series):
        vals = [getattr(r, field) for r in rows]
        xs = [x[j] + (i - 1.5) * w for j, v in enumerate(vals) if v is not None]
        ax.bar(xs, [v for v in vals if v is not None], width=w, label=label)
    ax.set_xticks(x, [r.cell for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set(title=f"{lb.model}: latency percentiles", ylabel="ms (log scale)")
    if rows:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")


def latency_percentiles(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes[0], rep.leaderboards):
        _latency_panel(ax, lb)
    return _png(fig)


def has_curve(rep: Report) -> bool:
    """A bit-width curve needs at least two weight-only rows with bits per weight and a quality figure."""
    return any(len([r for r in lb.curve_rows() if r.ppl is not None or r.acc_avg is not None]) >= 2
               for lb in rep.leaderboards)


def _curve_panel(ax, lb: Leaderboard, value: Callable[[Row], float | None], stderr: Callable[[Row], float | None],
                 what: str) -> None:
    rows = [r for r in lb.curve_rows() if value(r) is not None]
    for method in sorted({r.method for r in rows}):
        pts = sorted((r for r in rows if r.method == method), key=lambda r: r.bits_per_weight)
        errs = [Z95 * stderr(r) if stderr(r) is not None else 0.0 for r in pts]
        ys = [value(r) for r in pts]
        ax.errorbar([r.bits_per_weight for r in pts], ys, yerr=[[min(e, 0.95 * y) for e, y in zip(errs, ys)], errs],
                    marker="o", ms=5, capsize=3, ls="--" if pts[0].quality_only else "-",
                    label=method + (" (quality only)" if pts[0].quality_only else ""))
    base = next((r for r in lb.rows if r.baseline and value(r) is not None), None)
    if base is not None:
        se = Z95 * (stderr(base) or 0.0)
        ax.axhline(value(base), color="black", lw=1, ls=":", label=f"{base.cell} (baseline)")
        if se:
            ax.axhspan(value(base) - se, value(base) + se, color="grey", alpha=0.15)
    if rows:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, what)
    ax.set(title=f"{lb.model}: {what} vs bits per weight", xlabel="bits per weight (codes + scales)",
           ylabel=f"{what} (95% interval)")
    ax.grid(alpha=0.3)


def bitwidth_curve(rep: Report) -> bytes:
    fig, axes = _figure(2, len(rep.leaderboards))
    for (ppl_ax, acc_ax), lb in zip(axes, rep.leaderboards):
        _curve_panel(ppl_ax, lb, lambda r: r.ppl, lambda r: r.ppl_stderr, "word perplexity")
        if any(r.ppl for r in lb.curve_rows()):
            ppl_ax.set_yscale("log")
        _curve_panel(acc_ax, lb, lambda r: r.acc_avg, lambda r: r.acc_avg_stderr, "accuracy")
    return _png(fig)


def serving_curves(rep: Report) -> bytes:
    panels = [(lb, shape, [c for c in lb.regimes.curves if c.shape == shape])
              for lb in rep.leaderboards if lb.regimes for shape in dict.fromkeys(c.shape for c in lb.regimes.curves)]
    fig, axes = _figure(len(panels))
    for ax, (lb, shape, cvs) in zip(axes[0], panels):
        for c in cvs:
            pts = [p for p in c.points if p.tpot_p50_ms is not None]
            style = {"color": "black", "marker": "s"} if c.cell == lb.baseline else {"marker": "o"}
            ax.plot([p.tpot_p50_ms for p in pts], [p.output_tok_s for p in pts], label=c.cell, lw=1.2, ms=5, **style)
            for p in pts:
                ax.annotate(str(p.concurrency), (p.tpot_p50_ms, p.output_tok_s), textcoords="offset points",
                            xytext=(3, 3), fontsize=7, color="grey")
        ax.set(title=f"{lb.model}: {cvs[0].shape_label()}", xlabel="TPOT p50 (ms per output token, per request)",
               ylabel="output tokens/s (all requests)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def has_serving_curves(rep: Report) -> bool:
    return any(lb.regimes and lb.regimes.curves for lb in rep.leaderboards)


def render_all(rep: Report) -> dict[str, bytes]:
    """``{plot name: PNG bytes}`` for every plot, in ``PLOTS`` order, then the optional ones that have data."""
    make = {"quality_vs_throughput": quality_vs_throughput, "recovery_by_task": recovery_by_task,
            "quality_vs_size": quality_vs_size, "latency_percentiles": latency_percentiles,
            "bitwidth_curve": bitwidth_curve, "serving_curves": serving_curves}
    names = [*PLOTS, *(["bitwidth_curve"] if has_curve(rep) else []),
             *(["serving_curves"] if has_serving_curves(rep) else [])]
    return {name: make[name](rep) for name in names}
