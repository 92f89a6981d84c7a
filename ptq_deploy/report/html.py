"""One self-contained HTML page: the leaderboards (same cell texts as the Markdown, in the same two
tables per model, so each fits a laptop screen: a cell wraps at its spaces before a table scrolls; rank
and scheme stay in view if one still does), the KV-cache tables, and the plots embedded as base64 PNGs; no
external file, script or font."""

from __future__ import annotations

import base64
from html import escape

from ptq_deploy.report import kv, regimes
from ptq_deploy.report.leaderboard import Report
from ptq_deploy.report.render import (GROUPS, LEGEND, QUALITY_ONLY, STAR, decisions, header, notes, quality_only_frame,
                                     table_frame)

CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; margin: 1em 0 0.3em; }
table { border-collapse: separate; border-spacing: 0; font-size: 13px; margin: 8px 0; }
th, td { border-right: 1px solid #ccc; border-bottom: 1px solid #ccc; padding: 4px 6px; text-align: right;
         background: #fff; }
th { background: #2f4b7c; color: #fff; min-width: 4em; vertical-align: bottom; }
td.col1, td.col2 { text-align: left; }
table.lb td.col1, table.kv td.col0 { white-space: nowrap; }
table.lb .col0 { position: sticky; left: 0; min-width: 2.5em; max-width: 2.5em; z-index: 1; }
table.lb .col1 { position: sticky; left: calc(2.5em + 13px); z-index: 1; box-shadow: 2px 0 2px -1px #999; }
table.kv .col0 { position: sticky; left: 0; z-index: 1; box-shadow: 2px 0 2px -1px #999; text-align: left; }
tr:nth-child(even) td { background: #f3f6fb; }
td.baseline { background: #fff4d6 !important; font-weight: 600; }
.rec { background: #e3f4e1; border-left: 4px solid #3a9a3a; padding: 8px 12px; }
.small { font-size: 12px; color: #555; }
.scroll { overflow-x: auto; max-width: 100%; }
img { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }
"""


def table(frame, kind: str, baseline_row: bool = False) -> str:
    """``frame`` as an HTML table of class ``kind`` ("lb": rank and scheme stay in view, "kv": the method does),
    the first row marked as the baseline where ``baseline_row``; scrolls sideways only if it cannot wrap to fit."""
    import pandas as pd

    marks = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if baseline_row and len(frame):
        marks.iloc[0] = "baseline"
    styled = (frame.style.hide(axis="index").format(escape="html").set_td_classes(marks)
              .set_table_attributes(f'class="{kind}"'))
    return f"<div class='scroll'>{styled.to_html()}</div>"


def _table(lb, group: str) -> str:
    return f"<h3>{escape(GROUPS[group])}</h3>" + table(table_frame(lb, group), "lb", bool(lb.rows and lb.rows[0].baseline))


def _kv(secs: list[kv.KVSection]) -> list[str]:
    import pandas as pd

    parts = []
    for s in secs:
        parts.append(f"<h2>KV cache: {escape(s.model)}, {escape(s.cell)} (baseline: the unquantized cache of the same backend)</h2>")
        if s.rows:
            parts += ["<h3>KV-cache methods</h3>", table(pd.DataFrame(kv.table(s), columns=kv.HEADERS), "kv")]
        if s.judged:
            parts += ["<h3>KV methods against the recovery rule</h3>",
                      table(pd.DataFrame(kv.judge_table(s), columns=kv.JUDGE_HEADERS), "kv")]
        if s.recommendation:
            parts.append(f"<p><b>KV recommendation</b>: {escape(s.recommendation)}</p>")
        if s.findings:
            parts.append("<ul class='small'>" + "".join(f"<li>{escape(f)}</li>" for f in s.findings) + "</ul>")
        if s.capacity:
            parts += ["<h3>vLLM KV capacity</h3>", table(pd.DataFrame(kv.cap_table(s), columns=kv.CAP_HEADERS), "kv")]
    if secs:
        parts.append(f"<p class='small'>{escape(kv.LEGEND)}</p>")
    return parts


def _regimes(rg: regimes.Regimes, slo: str) -> list[str]:
    import pandas as pd

    res = pd.DataFrame([[r.regime, r.shape or "–", r.measure, r.text] for r in rg.results],
                       columns=["regime", "shape", "measure", "winner"])
    parts = ["<h3>Serving regimes</h3>",
             f"<p class='small'>Latency targets (p99): {escape(slo)}. Candidates: the schemes meeting the quality "
             "rule, the baseline included. Throughput per level is one timed pass of its requests.</p>",
             table(res, "regimes")]
    for title, items in (("Crossovers (output tok/s vs the baseline at the same concurrency)", rg.crossovers),
                         ("Meet the quality rule but have no speed numbers here", rg.untimed)):
        if items:
            parts.append(f"<p class='small'><b>{escape(title)}:</b></p><ul class='small'>"
                         + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>")
    if rg.curves:
        parts += ["<p class='small'>Load curves: output tok/s at each concurrency c (TPOT p99 ms); ✗: a latency "
                  "target missed.</p>", table(regimes.curve_frame(rg), "curves")]
    return parts


def _img(name: str, png: bytes) -> str:
    return (f"<h2>{escape(name.replace('_', ' '))}</h2>"
            f"<img alt='{escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def page(rep: Report, plots: dict[str, bytes], kv_plots: dict[str, bytes] | None = None) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ptq-deploy report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>ptq-deploy report: {escape(rep.results_dir)}</h1>",
             f"<p class='small'>{escape(header(rep))}</p>"]
    for lb in rep.leaderboards:
        parts += [f"<h2>{escape(lb.model)} (baseline {escape(lb.baseline)})</h2>",
                  f"<p class='rec'><b>Recommendation:</b> {escape(lb.recommendation.why)}</p>"]
        for heading, items in decisions(lb.recommendation):
            parts.append(f"<p class='small'><b>{escape(heading)}:</b></p><ul class='small'>"
                         + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>")
        parts += [_table(lb, group) for group in GROUPS]
        parts.append(f"<p class='small'>{escape(STAR)}</p>")
        if lb.quality_only:
            parts.append(f"<h3>{escape(QUALITY_ONLY)}</h3>{table(quality_only_frame(lb), 'qo')}")
        n = notes(lb)
        if n:
            parts.append("<ul class='small'>" + "".join(f"<li>{escape(x)}</li>" for x in n) + "</ul>")
        if lb.regimes is not None:
            parts += _regimes(lb.regimes, rep.constraints.describe_slo())
    parts.append(f"<p class='small'>{escape(LEGEND)}</p>")
    parts += _kv(rep.kv)
    parts += [_img(name, png) for name, png in (kv_plots or {}).items()]
    parts += [_img(name, png) for name, png in plots.items()]
    parts.append("</body></html>")
    return "\n".join(parts)
