"""Markdown, JSON and CSV of a ``Report``.

The tables of every format come from ``columns()``: one cell text per row x column, built only from the
row's (already rounded) values with ``fmt.num`` / ``fmt.pm``, so a number in the Markdown is the number
in the JSON. Columns come in two groups, each its own table so that neither needs sideways scrolling:
"quality" (the outcome, the worst recovery, each task's score and recovery with its 95% interval,
the most discriminating task first) and "speed" (throughput, latency, sizes, status). Quality-only rows
(POT / APOT, stored dense) get a third table of their own, with their effective size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ptq_deploy.engine.kernels import brief_reason
from ptq_deploy.report import kv, regimes
from ptq_deploy.report.fmt import MISSING, num, pm
from ptq_deploy.report.leaderboard import Leaderboard, Report
from ptq_deploy.report.recommend import Recommendation
from ptq_deploy.report.row import Row, to_frame

STAR = ("★: on the Pareto front of worst recovery × offline throughput (no other scheme is both more accurate "
        "and faster). A row can be \"inconclusive\" and \"regressed\" at once: the delta is real (its interval "
        "excludes 0) but whether it stays within the allowed recovery is not yet decided.")
GROUPS = {"quality": "Quality vs the baseline", "speed": "Speed and size"}
QUALITY_ONLY = "Quality only (weights on a grid, stored dense: not deployable, never ranked or recommended)"
LEGEND = ("Recovery: candidate / baseline for accuracy, baseline / candidate for perplexity (below 100% is worse), "
          "with its 95% interval from the paired bootstrap of the delta vs the baseline scored with the same backend "
          "(n: the documents each comparison pairs). "
          "Quality: meets when every task's interval lies at or above its minimum recovery, fails when one lies "
          "below, inconclusive when one straddles it or has no interval (more documents would decide). Verdict: "
          "\"not distinguishable\" when the 95% interval of the delta contains 0, \"unknown\" without one. ± is one "
          "standard error. Throughput: offline output tokens/s, median ± stdev over iterations. Weights: tensor bytes "
          "(GB = 1e9 bytes); engine mem: the perf engine's own memory (NVML per-process GPU memory, or the RSS its load "
          "added on CPU; older results: the whole process's peak), KV-cache space included. KV tokens / seqs: the "
          "KV-cache tokens vLLM allocated and how many 4k / 32k-token sequences fit at once. J/token: energy per output "
          "token (NVML; not measured on CPU). "
          "Bits/weight: stored bits of the quantized Linear layers (weights, scales, zero points) per weight. Quality "
          "only: POT / APOT weights sit on a power-of-two grid but are stored dense, so engines run them as 16-bit "
          "models; their bits/weight and effective size count the codes (bits × weights) and one 16-bit scale per group.")


@dataclass(frozen=True)
class Column:
    header: str
    fields: tuple[str, ...]  # the JSON fields (flat names, see row.flat) the cell shows
    text: Callable[[Row], str]
    group: str = "quality"  # both: shown in every group's table


def _pair(a: float | None, b: float | None) -> str:
    return MISSING if a is None and b is None else f"{num(a)} / {num(b)}"


def interval(v: float | None, lo: float | None, hi: float | None) -> str:
    """``value (lo–hi)``; just the value without an interval."""
    if v is None:
        return MISSING
    return num(v) if lo is None and hi is None else f"{num(v)} ({num(lo)}–{num(hi)})"


def _capacity(r: Row) -> str:
    if r.kv_tokens is None:
        return MISSING
    return f"{num(r.kv_tokens)} / {num(r.seqs_at_4k)} / {num(r.seqs_at_32k)}"


def _score(t: str) -> Callable[[Row], str]:
    return lambda r: pm(r.tasks[t].value, r.tasks[t].stderr) if t in r.tasks else MISSING


def _recovery(t: str) -> Callable[[Row], str]:
    def text(r: Row) -> str:
        ts = r.tasks.get(t)
        if ts is None or ts.recovery_pct is None:
            return MISSING
        cell = interval(ts.recovery_pct, ts.recovery_low_pct, ts.recovery_high_pct)
        return cell if r.baseline else f"{cell} {ts.outcome}"
    return text


def _threshold(lb: Leaderboard, t: str) -> str:
    ts = next((r.tasks[t] for r in lb.rows if t in r.tasks and r.tasks[t].min_recovery_pct is not None), None)
    return f" (min {num(ts.min_recovery_pct)})" if ts else ""


def _n(lb: Leaderboard, t: str) -> str:
    """How many documents the task's comparisons rest on: " (n=24)", or a range when cells differ."""
    ns = sorted({r.tasks[t].n for r in [*lb.rows, *lb.quality_only] if t in r.tasks and r.tasks[t].n})
    return "" if not ns else f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}-{ns[-1]})"


def columns(lb: Leaderboard) -> list[Column]:
    metric = {t: next((r.tasks[t].metric for r in lb.rows if t in r.tasks), "") for t in lb.tasks}
    rec = ("recovery_pct", "recovery_low_pct", "recovery_high_pct")
    cols = [
        Column("rank", ("rank",), lambda r: num(r.rank), "both"),
        Column("scheme", (), lambda r: r.cell + (" ★" if r.pareto else ""), "both"),
        Column("quality", (), lambda r: r.quality or MISSING),
        Column("worst recovery %", ("worst_recovery_pct", "worst_recovery_low_pct", "worst_recovery_high_pct"),
               lambda r: interval(r.worst_recovery_pct, r.worst_recovery_low_pct, r.worst_recovery_high_pct)),
    ]
    for t in lb.tasks:
        cols += [Column(f"{t} {metric[t]}{_n(lb, t)}", (f"tasks.{t}.value", f"tasks.{t}.stderr"), _score(t)),
                 Column(f"{t} recovery %{_threshold(lb, t)}", tuple(f"tasks.{t}.{f}" for f in rec), _recovery(t))]
    cols += [
        Column("Δ ppl", ("ppl_delta", "ppl_delta_stderr"), lambda r: pm(r.ppl_delta, r.ppl_delta_stderr, sign=True)),
        Column("verdict", (), lambda r: r.verdict or MISSING),
        Column("status", (), lambda r: r.status_text, "speed"),
        Column("out tok/s", ("throughput_tok_s", "throughput_tok_s_stdev"),
               lambda r: pm(r.throughput_tok_s, r.throughput_tok_s_stdev), "speed"),
        Column("speedup", ("speedup", "speedup_stderr"), lambda r: pm(r.speedup, r.speedup_stderr)
               + ("x" if r.speedup is not None else ""), "speed"),
        Column("TTFT p50 / p99 ms", ("ttft_p50_ms", "ttft_p99_ms"), lambda r: _pair(r.ttft_p50_ms, r.ttft_p99_ms),
               "speed"),
        Column("TPOT p50 / p99 ms", ("tpot_p50_ms", "tpot_p99_ms"), lambda r: _pair(r.tpot_p50_ms, r.tpot_p99_ms),
               "speed"),
        Column("load s", ("load_s",), lambda r: num(r.load_s), "speed"),
        Column("weights GB", ("weights_gb",), lambda r: num(r.weights_gb), "speed"),
        Column("bits/weight", ("bits_per_weight",), lambda r: num(r.bits_per_weight), "speed"),
        Column("engine mem GB", ("memory_gb",), lambda r: num(r.memory_gb), "speed"),
        Column("KV tokens / seqs@4k / @32k", ("kv_tokens", "seqs_at_4k", "seqs_at_32k"), _capacity, "speed"),
        Column("J/token", ("energy_j_per_token", "energy_j_per_token_stdev"),
               lambda r: pm(r.energy_j_per_token, r.energy_j_per_token_stdev), "speed"),
        Column("compress s", ("compress_s",), lambda r: num(r.compress_s), "speed"),
        Column("roofline %", ("roofline_pct",), lambda r: num(r.roofline_pct), "speed"),
    ]
    return cols


def group_columns(lb: Leaderboard, group: str) -> list[Column]:
    return [c for c in columns(lb) if c.group in (group, "both")]


def quality_only_columns(lb: Leaderboard) -> list[Column]:
    """The quality-only table: the scheme, its method and effective size, then the quality columns."""
    by = {c.header: c for c in columns(lb)}
    quality = [c for c in columns(lb) if c.group == "quality"]
    return [by["scheme"], Column("method", (), lambda r: r.method or MISSING), by["bits/weight"],
            Column("effective GB", ("effective_gb",), lambda r: num(r.effective_gb)),
            Column("stored GB", ("weights_gb",), lambda r: num(r.weights_gb)), *quality, by["compress s"]]


def table_frame(lb: Leaderboard, group: str = "quality", cols: list[Column] | None = None,
                rows: list[Row] | None = None):
    import pandas as pd

    cols = cols if cols is not None else group_columns(lb, group)
    rows = lb.rows if rows is None else rows
    return pd.DataFrame([[c.text(r) for c in cols] for r in rows], columns=[c.header for c in cols])


def quality_only_frame(lb: Leaderboard):
    return table_frame(lb, cols=quality_only_columns(lb), rows=lb.quality_only)


def decisions(rec: Recommendation) -> list[tuple[str, list[str]]]:
    """(heading, lines) for what decided the recommendation: the measures, the excluded and the undecided."""
    out = []
    n_all = len(rec.candidates) + len(rec.excluded) + len(rec.inconclusive) - 1  # every scheme but the baseline
    if rec.decided_by:
        out.append(("Measures that excluded or left undecided a scheme",
                    [", ".join(f"{m}: {n} of the {n_all} other schemes" for m, n in rec.decided_by.items())]))
    if rec.excluded:
        out.append(("Excluded", [f"{c}: {why}" for c, why in rec.excluded.items()]))
    if rec.inconclusive:
        out.append(("Inconclusive (more data needed)", [f"{c}: {why}" for c, why in rec.inconclusive.items()]))
    return out


def notes(lb: Leaderboard) -> list[str]:
    """Why a step failed or cannot run here, and what could not be computed, one line each; cells failing a
    step for the same reason share one line."""
    why_cells: dict[str, list[str]] = {}
    out = []
    for r in [*lb.rows, *lb.quality_only]:
        for step, st in r.status.items():
            if st != "ok":
                what = {"not_runnable": "not runnable here", "not_applicable": "not applicable"}.get(st, "failed")
                why = brief_reason(r.reasons.get(step) or "no reason recorded")
                why_cells.setdefault(f"{step}: {why if why.startswith(what) else f'{what}: {why}'}", []).append(r.cell)
        out.extend(f"{r.cell}: {n}" for n in r.notes)
    out = [f"{', '.join(cells)} {why}" for why, cells in why_cells.items()] + out
    sources = list(dict.fromkeys(r.latency_source for r in lb.rows if r.latency_source))
    if sources:
        out.append(f"TTFT / TPOT measured in: {'; '.join(sources)}")
    return out


def header(rep: Report) -> str:
    return (f"Generated {rep.generated_at}. Constraints ({rep.constraints_from}): {rep.constraints.describe()}. "
            f"Ranking: {rep.ranking_rule}.")


def markdown(rep: Report, plots: list[str] | None = None, kv_plots: dict[str, str] | None = None) -> str:
    lines = [f"# ptq-deploy report: {rep.results_dir}", "", header(rep), ""]
    for lb in rep.leaderboards:
        lines += [f"## {lb.model} (baseline {lb.baseline})", "", f"**Recommendation:** {lb.recommendation.why}", ""]
        for heading, items in decisions(lb.recommendation):
            lines += [f"{heading}:", "", *(f"- {x}" for x in items), ""]
        for group, title in GROUPS.items():
            lines += [f"### {title}", "",
                      table_frame(lb, group).to_markdown(index=False, tablefmt="github", disable_numparse=True), ""]
        lines += [STAR, ""]
        if lb.quality_only:
            lines += [f"### {QUALITY_ONLY}", "",
                      quality_only_frame(lb).to_markdown(index=False, tablefmt="github", disable_numparse=True), ""]
        n = notes(lb)
        if n:
            lines += ["Notes:", "", *(f"- {x}" for x in n), ""]
        if lb.regimes is not None:
            lines += ["### Serving regimes", "", *regimes.lines(lb.regimes, rep.constraints.describe_slo())]
    lines += [LEGEND, ""]
    lines += kv.markdown(rep.kv, kv_plots or {})
    if plots:
        lines += ["## Plots", "", *(f"![{p.rsplit('/', 1)[-1].rsplit('.', 1)[0]}]({p})" for p in plots), ""]
    return "\n".join(lines)


def to_json(rep: Report) -> str:
    return rep.model_dump_json(indent=2) + "\n"


def to_csv(rep: Report) -> str:
    return to_frame(rep.rows()).to_csv(index=False)
