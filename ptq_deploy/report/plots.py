"""PNG plots of a ``Report`` (matplotlib, Agg; no pyplot state), led by what separates the schemes:

- ``quality_vs_throughput``: the worst recovery across tasks (with that task's 95% interval) against
  output tokens/s, with the Pareto front computed on those two; one panel per model;
- ``recovery_by_task``: one panel per model x task, every scheme's recovery with its interval and the
  task's minimum recovery, coloured by outcome: where the tasks disagree it shows;
- ``quality_vs_size``: the worst recovery against weight size, so schemes without speed numbers appear;
- ``latency_percentiles``: TTFT and TPOT p50 / p99 per scheme.

A cell without the figures a plot needs is left out of that plot; a plot with no data at all says so.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from ptq_deploy.report.fmt import num
from ptq_deploy.report.leaderboard import Leaderboard, Report
from ptq_deploy.report.row import Row

PLOTS = ("quality_vs_throughput", "recovery_by_task", "quality_vs_size", "latency_percentiles")
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
        ax.annotate(r.cell, (x(r), r.worst_recovery_pct), textcoords="offset points",
                    xytext=(6, 6 if i % 2 else -12), fontsize=8)
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


def quality_vs_throughput(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes[0], rep.leaderboards):
        pts = worst_scatter(ax, lb, lambda r: r.throughput_tok_s, lambda r: r.throughput_tok_s_stdev)
        front = sorted((r for r in pts if r.pareto), key=lambda r: r.throughput_tok_s)
        if len(front) > 1:
            ax.step([r.throughput_tok_s for r in front], [r.worst_recovery_pct for r in front], where="pre",
                    ls="--", color="black", lw=1, label="Pareto front")
        worst = _reference_lines(ax, lb) if pts else ""
        if pts:
            ax.legend(fontsize=7, loc="lower left")
        else:
            _no_data(ax, "recovery and throughput")
        ax.set(title=f"{lb.model}: quality loss vs throughput{worst}", xlabel="output tokens/s (offline)",
               ylabel=f"worst recovery across tasks vs {lb.baseline} (%, 95% CI)")
        ax.grid(alpha=0.3)
    return _png(fig)


def quality_vs_size(rep: Report) -> bytes:
    fig, axes = _figure(len(rep.leaderboards))
    for ax, lb in zip(axes[0], rep.leaderboards):
        pts = worst_scatter(ax, lb, lambda r: r.weights_gb, lambda r: None)
        worst = _reference_lines(ax, lb) if pts else ""
        if pts:
            ax.legend(fontsize=7, loc="lower right")
        else:
            _no_data(ax, "weights and recovery")
        ax.set(title=f"{lb.model}: quality loss vs weight size{worst}", xlabel="weights (GB)",
               ylabel=f"worst recovery across tasks vs {lb.baseline} (%, 95% CI)")
        ax.grid(alpha=0.3)
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


def render_all(rep: Report) -> dict[str, bytes]:
    """``{plot name: PNG bytes}`` for every plot, in ``PLOTS`` order."""
    make = {"quality_vs_throughput": quality_vs_throughput, "recovery_by_task": recovery_by_task,
            "quality_vs_size": quality_vs_size, "latency_percentiles": latency_percentiles}
    return {name: make[name](rep) for name in PLOTS}
