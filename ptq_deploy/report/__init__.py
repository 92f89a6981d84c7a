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
from ptq_deploy.report import compare, html, kv, plots, regimes, render
from ptq_deploy.report.cells import baseline_scheme, experiment_settings, load_cells
from ptq_deploy.report.collect import collect
from ptq_deploy.report.compare import Comparison, compare as compare_reports
from ptq_deploy.report.leaderboard import Report, build
from ptq_deploy.report.settings import ReportSettings
from ptq_deploy.results import atomic_write_text

FORMATS = ("md", "json", "csv", "html")
FILES = {"md": "leaderboard.md", "json": "report.json", "csv": "leaderboard.csv", "html": "report.html"}


def resolve_settings(results_dir: Path, min_recovery: float | None = None,
                     min_recovery_by_task: dict[str, float] | None = None, max_memory_gb: float | None = None,
                     min_throughput: float | None = None, slo: dict[str, float] | None = None,
                     capacity_context: int | None = None) -> tuple[ReportSettings, str]:
    """The constraints to report under and where they came from: each value given here, over the results
    dir's ``experiment.yaml`` ``report:`` section, over ``ReportSettings``' defaults."""
    exp = experiment_settings(results_dir)
    given = {"min_recovery": min_recovery, "min_recovery_by_task": min_recovery_by_task or None,
             "max_memory_gb": max_memory_gb, "min_throughput": min_throughput, "slo": slo or None,
             "capacity_context": capacity_context}
    cli = any(v is not None for v in given.values())
    source = " + ".join(s for s, used in (("experiment.yaml", exp is not None), ("command line", cli)) if used)
    return (exp or ReportSettings()).override(**given), source or "defaults"


def build_report(results_dir: Path, min_recovery: float | None = None,
                 min_recovery_by_task: dict[str, float] | None = None, max_memory_gb: float | None = None,
                 min_throughput: float | None = None, baseline: str | None = None,
                 bootstrap_iters: int = 1000, seed: int = 0, slo: dict[str, float] | None = None,
                 capacity_context: int | None = None) -> Report:
    """Read ``results_dir`` and rank every model's cells (``leaderboard``) under the constraints given here
    (``resolve_settings``: over the experiment's ``report:`` section, over the defaults)."""
    root = Path(results_dir)
    settings, source = resolve_settings(root, min_recovery, min_recovery_by_task, max_memory_gb, min_throughput,
                                        slo, capacity_context)
    base = baseline or baseline_scheme(root)
    cells = load_cells(root)
    rows = collect(root, base, iters=bootstrap_iters, seed=seed, cells=cells)
    settings.check_tasks(t for r in rows for t in r.tasks)
    return build(rows, root, settings, base, source, kv.sections(cells, base, settings.threshold_pct()), cells)


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
    out = Path(out_dir)
    fmts = parse_formats(formats)
    written: list[Path] = []
    pngs: dict[str, bytes] = {}
    kv_pngs: dict[str, bytes] = {}
    if {"md", "html"} & set(fmts):
        pngs = plots.render_all(report)
        kv_pngs = {kv.heatmap_name(s): png for s in report.kv if (png := kv.heatmap(s)) is not None}
        for name, data in {**pngs, **kv_pngs}.items():
            p = out / "plots" / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
            written.append(p)
    text = {"md": lambda: render.markdown(report, [f"plots/{n}.png" for n in pngs],
                                          {n: f"plots/{n}.png" for n in kv_pngs}),
            "json": lambda: render.to_json(report), "csv": lambda: render.to_csv(report),
            "html": lambda: html.page(report, pngs, kv_pngs)}
    for f in fmts:
        written.append(atomic_write_text(out / FILES[f], text[f](), force=True))
    curves = [lb.regimes for lb in report.leaderboards if lb.regimes and lb.regimes.curves]
    if "csv" in fmts and curves:  # every serving level, one row each
        import pandas as pd

        frame = pd.concat([regimes.points_frame(rg) for rg in curves], ignore_index=True)
        written.append(atomic_write_text(out / "serving_curves.csv", frame.to_csv(index=False), force=True))
    return written


def write_comparison(comp: Comparison, out_dir: Path, formats=FORMATS) -> list[Path]:
    out = Path(out_dir)
    text = {"md": compare.markdown, "json": lambda c: c.model_dump_json(indent=2) + "\n", "csv": compare.to_csv,
            "html": compare.html}
    ext = {"md": "md", "json": "json", "csv": "csv", "html": "html"}
    return [atomic_write_text(out / f"compare.{ext[f]}", text[f](comp), force=True) for f in parse_formats(formats)]

