"""``ptq-deploy report RESULTS_DIR [RESULTS_DIR_B]``: leaderboards, plots and a recommendation from a
suite results dir (``ptq_deploy.suite.layout``), read from its result files alone.

``build_report(results_dir, ...) -> Report``; ``write_report(report, out_dir)`` writes
``leaderboard.md``, ``report.json``, ``leaderboard.csv``, ``report.html`` and ``plots/*.png``;
``compare_reports(a, b)`` / ``write_comparison`` do the same for two result sets side by side.
Report files are derived from the results, so they are regenerated (replaced) on every run.
"""

from __future__ import annotations

from pathlib import Path

from ptq_deploy.errors import UsageError
from ptq_deploy.report.collect import Row, baseline_scheme, collect, to_frame
from ptq_deploy.report.compare import Comparison, compare as compare_reports
from ptq_deploy.report.leaderboard import Constraints, Leaderboard, Recommendation, Report, build
from ptq_deploy.results import atomic_write_text

FORMATS = ("md", "json", "csv", "html")
FILES = {"md": "leaderboard.md", "json": "report.json", "csv": "leaderboard.csv", "html": "report.html"}


def build_report(results_dir: Path, min_recovery: float | None = 0.99, max_memory_gb: float | None = None,
                 min_throughput: float | None = None, baseline: str | None = None,
                 bootstrap_iters: int = 1000, seed: int = 0) -> Report:
    """Read ``results_dir`` and rank every model's cells (see ``leaderboard`` for the rules)."""
    root = Path(results_dir)
    cons = Constraints(min_recovery=min_recovery, max_memory_gb=max_memory_gb, min_throughput=min_throughput)
    base = baseline or baseline_scheme(root)
    return build(collect(root, base, iters=bootstrap_iters, seed=seed), root, cons, base)


def parse_formats(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    fmts = [f.strip().lower().lstrip(".") for f in items if f.strip()]
    fmts = ["md" if f == "markdown" else f for f in fmts]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"unknown report format {bad[0] if bad else spec!r}; use {', '.join(FORMATS)}")
    return list(dict.fromkeys(fmts))


def write_report(report: Report, out_dir: Path, formats=FORMATS) -> list[Path]:
    """Write the report in ``formats`` (plots with md and html) into ``out_dir``; returns the paths."""
    from ptq_deploy.report import html, plots, render

    out = Path(out_dir)
    fmts = parse_formats(formats)
    written: list[Path] = []
    pngs: dict[str, bytes] = {}
    if {"md", "html"} & set(fmts):
        pngs = plots.render_all(report)
        for name, data in pngs.items():
            p = out / "plots" / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
            written.append(p)
    text = {"md": lambda: render.markdown(report, [f"plots/{n}.png" for n in pngs]),
            "json": lambda: render.to_json(report), "csv": lambda: render.to_csv(report),
            "html": lambda: html.page(report, pngs)}
    for f in fmts:
        written.append(atomic_write_text(out / FILES[f], text[f](), force=True))
    return written


def write_comparison(comp: Comparison, out_dir: Path, formats=FORMATS) -> list[Path]:
    from ptq_deploy.report import compare

    out = Path(out_dir)
    text = {"md": compare.markdown, "json": lambda c: c.model_dump_json(indent=2) + "\n", "csv": compare.to_csv,
            "html": compare.html}
    ext = {"md": "md", "json": "json", "csv": "csv", "html": "html"}
    return [atomic_write_text(out / f"compare.{ext[f]}", text[f](comp), force=True) for f in parse_formats(formats)]


__all__ = ["build_report", "write_report", "compare_reports", "write_comparison", "parse_formats", "Report",
           "Leaderboard", "Recommendation", "Constraints", "Row", "Comparison", "to_frame", "FORMATS", "FILES"]
