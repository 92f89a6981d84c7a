"""Markdown, JSON and CSV of a ``Report``.

The tables of every format come from ``table()``: one cell text per row x column, built only from the
row's (already rounded) values with ``fmt.num`` / ``fmt.pm``, so a number in the Markdown is the
number in the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ptq_deploy.report.collect import Row, flat, to_frame
from ptq_deploy.report.fmt import MISSING, num, pm
from ptq_deploy.report.leaderboard import Leaderboard, Report

VERDICT_MARK = {"baseline": "baseline", "not distinguishable": "not distinguishable", "regressed": "regressed",
                "improved": "improved", None: MISSING}
LEGEND = ("± is one standard error (accuracy: lm-eval's or bootstrap; recovery and Δ: the paired bootstrap of the "
          "delta vs the baseline, same backend); a verdict is \"not distinguishable\" when the 95% interval of the "
          "delta contains 0. Throughput: offline output tokens/s, median ± stdev over iterations. Weights: tensor "
          "bytes (GB = 1e9 bytes); peak mem: measured peak of the perf engine (includes vLLM's KV-cache space). "
          "★: on the recovery × throughput Pareto front.")


@dataclass(frozen=True)
class Column:
    header: str
    fields: tuple[str, ...]  # the JSON fields (flat names, see collect.flat) the cell shows
    text: Callable[[Row], str]


def _pair(a: float | None, b: float | None) -> str:
    return MISSING if a is None and b is None else f"{num(a)} / {num(b)}"


def _task(t: str) -> Callable[[Row], str]:
    return lambda r: pm(r.tasks[t].value, r.tasks[t].stderr) if t in r.tasks else MISSING


def columns(lb: Leaderboard) -> list[Column]:
    metric = {t: next((r.tasks[t].metric for r in lb.rows if t in r.tasks), "") for t in lb.tasks}
    cols = [
        Column("rank", ("rank",), lambda r: num(r.rank)),
        Column("scheme", (), lambda r: r.cell + (" ★" if r.pareto else "")),
        Column("status", (), lambda r: r.status_text),
    ]
    cols += [Column(f"{t} {metric[t]}", (f"tasks.{t}.value", f"tasks.{t}.stderr"), _task(t)) for t in lb.tasks]
    cols += [
        Column("acc avg", ("acc_avg", "acc_avg_stderr"), lambda r: pm(r.acc_avg, r.acc_avg_stderr)),
        Column("recovery %", ("recovery_pct", "recovery_pct_stderr"),
               lambda r: pm(r.recovery_pct, r.recovery_pct_stderr)),
        Column("acc verdict", (), lambda r: VERDICT_MARK[r.verdict]),
        Column("perplexity", ("ppl", "ppl_stderr"), lambda r: pm(r.ppl, r.ppl_stderr)),
        Column("Δ ppl", ("ppl_delta", "ppl_delta_stderr"),
               lambda r: pm(r.ppl_delta, r.ppl_delta_stderr, sign=True) + (f" ({r.ppl_verdict})" if r.ppl_verdict else "")),
        Column("out tok/s", ("throughput_tok_s", "throughput_tok_s_stdev"),
               lambda r: pm(r.throughput_tok_s, r.throughput_tok_s_stdev)),
        Column("speedup", ("speedup", "speedup_stderr"), lambda r: pm(r.speedup, r.speedup_stderr)
               + ("x" if r.speedup is not None else "")),
        Column("TTFT p50 / p99 ms", ("ttft_p50_ms", "ttft_p99_ms"), lambda r: _pair(r.ttft_p50_ms, r.ttft_p99_ms)),
        Column("TPOT p50 / p99 ms", ("tpot_p50_ms", "tpot_p99_ms"), lambda r: _pair(r.tpot_p50_ms, r.tpot_p99_ms)),
        Column("load s", ("load_s",), lambda r: num(r.load_s)),
        Column("weights GB", ("weights_gb",), lambda r: num(r.weights_gb)),
        Column("peak mem GB", ("memory_gb",), lambda r: num(r.memory_gb)),
        Column("compress s", ("compress_s",), lambda r: num(r.compress_s)),
        Column("roofline %", ("roofline_pct",), lambda r: num(r.roofline_pct)),
    ]
    return cols


def table(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    cols = columns(lb)
    return [c.header for c in cols], [[c.text(r) for c in cols] for r in lb.rows]


def table_frame(lb: Leaderboard):
    import pandas as pd

    headers, rows = table(lb)
    return pd.DataFrame(rows, columns=headers)


# the console's view (the Markdown/HTML/CSV carry every column)
CONSOLE_COLUMNS = ("rank", "scheme", "status", "acc avg", "recovery %", "acc verdict", "Δ ppl", "out tok/s", "speedup",
                   "weights GB")


def console_frame(lb: Leaderboard):
    df = table_frame(lb)
    return df[[c for c in CONSOLE_COLUMNS if c in df.columns]]


def notes(lb: Leaderboard) -> list[str]:
    """Why a step failed or cannot run here, and what could not be computed, one line each."""
    out = []
    for r in lb.rows:
        for step, st in r.status.items():
            if st != "ok":
                what = "not runnable here" if st == "not_runnable" else "failed"
                why = r.reasons.get(step) or "no reason recorded"
                out.append(f"{r.cell} {step}: {why if why.startswith(what) else f'{what}: {why}'}")
        out.extend(f"{r.cell}: {n}" for n in r.notes)
    sources = list(dict.fromkeys(r.latency_source for r in lb.rows if r.latency_source))
    if sources:
        out.append(f"TTFT / TPOT measured in: {'; '.join(sources)}")
    return out


def markdown(rep: Report, plots: list[str] | None = None) -> str:
    lines = [f"# ptq-deploy report: {rep.results_dir}", "",
             f"Generated {rep.generated_at}. Constraints: {rep.constraints.describe()}. "
             f"Ranking: {rep.ranking_rule}.", ""]
    for lb in rep.leaderboards:
        lines += [f"## {lb.model} (baseline {lb.baseline})", "",
                  f"**Recommendation:** {lb.recommendation.why}", "",
                  table_frame(lb).to_markdown(index=False, tablefmt="github", disable_numparse=True), ""]
        n = notes(lb)
        if n:
            lines += ["Notes:", "", *(f"- {x}" for x in n), ""]
    lines += [LEGEND, ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p.rsplit('/', 1)[-1].rsplit('.', 1)[0]}]({p})" for p in plots), ""]
    return "\n".join(lines)


def to_json(rep: Report) -> str:
    return rep.model_dump_json(indent=2) + "\n"


def to_csv(rep: Report) -> str:
    return to_frame(rep.rows()).to_csv(index=False)


__all__ = ["Column", "columns", "table", "table_frame", "notes", "markdown", "to_json", "to_csv", "flat"]
