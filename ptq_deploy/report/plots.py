"""PNG plots of a ``Report`` (matplotlib, Agg; no pyplot state): one panel per model.

- recovery vs throughput, with error bars and the Pareto front (higher is better on both axes);
- weights vs average accuracy;
- TTFT and TPOT percentiles (p50, p99) per scheme.

A cell without the figures a plot needs is left out of that plot; a plot with no data at all says so.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from ptq_deploy.report.collect import Row
from ptq_deploy.report.leaderboard import Leaderboard, Report

PLOTS = ("recovery_vs_throughput", "memory_vs_accuracy", "latency_percentiles")


def _figure(n: int, width: float = 6.0, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} measured", ha="center", va="center", transform=ax.transAxes, color="grey")


def _scatter(ax, rows: list[Row], x: Callable[[Row], float | None], y: Callable[[Row], float | None],
             xerr: Callable[[Row], float | None], yerr: Callable[[Row], float | None]) -> list[Row]:
    pts = [r for r in rows if x(r) is not None and y(r) is not None]
    for r in pts:
        ax.errorbar(x(r), y(r), xerr=xerr(r), yerr=yerr(r), fmt="s" if r.baseline else "o", ms=8, capsize=3,
                    label=r.cell)
        ax.annotate(r.cell, (x(r), y(r)), textcoords="offset points", xytext=(6, 6), fontsize=8)
    return pts


def recovery_vs_throughput(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes, rep.leaderboards):
        pts = _scatter(ax, lb.rows, lambda r: r.throughput_tok_s, lambda r: r.recovery_pct,
                       lambda r: r.throughput_tok_s_stdev, lambda r: r.recovery_pct_stderr)
        front = sorted((r for r in pts if r.pareto), key=lambda r: r.throughput_tok_s)
        if len(front) > 1:
            ax.step([r.throughput_tok_s for r in front], [r.recovery_pct for r in front], where="pre",
                    ls="--", color="black", lw=1, label="Pareto front")
        if pts:
            ax.axhline(100, color="grey", lw=0.8, ls=":")
            ax.legend(fontsize=7, loc="lower left")
        else:
            _no_data(ax, "recovery and throughput")
        ax.set(title=f"{lb.model}: accuracy recovery vs throughput", xlabel="output tokens/s (offline)",
               ylabel=f"recovery vs {lb.baseline} (%)")
        ax.grid(alpha=0.3)
    return _png(fig)


def memory_vs_accuracy(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes, rep.leaderboards):
        pts = _scatter(ax, lb.rows, lambda r: r.weights_gb, lambda r: r.acc_avg, lambda r: None,
                       lambda r: r.acc_avg_stderr)
        if pts:
            ax.legend(fontsize=7, loc="lower right")
        else:
            _no_data(ax, "weights and accuracy")
        ax.set(title=f"{lb.model}: weights vs accuracy", xlabel="weights (GB)", ylabel="average accuracy")
        ax.grid(alpha=0.3)
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
    for ax, lb in zip(axes, rep.leaderboards):
        _latency_panel(ax, lb)
    return _png(fig)


def render_all(rep: Report) -> dict[str, bytes]:
    """``{plot name: PNG bytes}`` for every plot."""
    return {"recovery_vs_throughput": recovery_vs_throughput(rep), "memory_vs_accuracy": memory_vs_accuracy(rep),
            "latency_percentiles": latency_percentiles(rep)}
