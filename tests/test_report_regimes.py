"""Serving regimes on recorded results: ``tests/data/results-regimes`` is the results dir
``scripts/bench_serving_regimes.py`` wrote (``smollm2-135m-serving``: BF16, INT8-W8A8 and INT4-W4A16 swept
through ``vllm serve`` over three workload shapes on the 2-core AMX CPU); ``tests/data/results-v1`` holds a
quality-meeting scheme vLLM could not time. Every expected winner is recomputed here from the perf result
files themselves, not from the report's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptq_deploy.report import build_report
from ptq_deploy.report.fmt import num
from tests.report_synth import CLI_ENV

DATA = Path(__file__).parent / "data"
REGIMES, V1 = DATA / "results-regimes", DATA / "results-v1"


def _curves(root: Path) -> dict[str, dict[str, list[dict]]]:
    """cell -> shape -> levels, read straight from each perf result file."""
    out: dict[str, dict[str, list[dict]]] = {}
    for f in root.glob("results/*/*/perf.json"):
        d = json.loads(f.read_text())
        out[f.parent.name] = {c["shape"]: c["levels"] for c in d["serving"]["curves"]}
    return out


def _slo(root: Path, tpot_ms: float | None) -> dict[str, float]:
    """The targets a report applies: the experiment's ``report: slo``, with ``tpot`` replaced (None: none at all)."""
    if tpot_ms is None:
        return {}
    return {**yaml.safe_load((root / "experiment.yaml").read_text()).get("report", {}).get("slo", {}), "tpot": tpot_ms}


def _best(levels: list[dict], slo: dict[str, float]) -> float | None:
    ok = [lv["output_throughput"] for lv in levels if all(lv[f"{k}_ms"]["p99"] <= v for k, v in slo.items())]
    return max(ok, default=None)


def _expected_winners(root: Path, cells: set[str], tpot_ms: float | None) -> dict[str, str | None]:
    by_shape: dict[str, dict[str, float]] = {}
    slo = _slo(root, tpot_ms)
    for cell, shapes in _curves(root).items():
        for shape, levels in shapes.items():
            b = _best(levels, slo)
            if cell in cells and b is not None:
                by_shape.setdefault(shape, {})[cell] = b
    shapes = {s for sh in _curves(root).values() for s in sh}
    return {s: max(by_shape[s], key=by_shape[s].get) if by_shape.get(s) else None for s in shapes}


def _winners(rep) -> dict[str, str | None]:
    rg = rep.leaderboards[0].regimes
    return {r.shape.split(" ")[0]: r.winner for r in rg.results if r.regime == "throughput"}


# INT4-W4A16 recovers ~82% of BF16's perplexity on this model: a rule every swept scheme meets
LOOSE = 0.75


def test_the_latency_target_decides_the_throughput_winner():
    base = build_report(REGIMES, min_recovery=LOOSE, slo={"tpot": 1e9, "ttft": 1e9})  # targets nothing misses
    lb = base.leaderboards[0]
    cells = {r.cell for r in lb.rows if r.quality in ("meets", "baseline")}
    assert cells == {"BF16", "INT8-W8A8", "INT4-W4A16"} and lb.regimes.curves
    peak = _expected_winners(REGIMES, cells, None)
    assert _winners(base) == peak and len(peak) == 3
    # every p99 TPOT the sweep measured, as a target: the winners move where the recorded levels say they do
    targets = sorted({lv["tpot_ms"]["p99"] for sh in _curves(REGIMES).values() for lvs in sh.values() for lv in lvs})
    moved = 0
    for t in targets[:: max(1, len(targets) // 8)]:
        want = _expected_winners(REGIMES, cells, t)
        assert _winners(build_report(REGIMES, min_recovery=LOOSE, slo={"tpot": t})) == want, t
        moved += want != peak
    assert moved, "no recorded target changed a winner: the data cannot show the SLO's effect"
    strict = build_report(REGIMES, min_recovery=LOOSE, slo={"tpot": targets[0] / 2})  # below every level: no scheme meets it
    for r in strict.leaderboards[0].regimes.results:
        if r.regime == "throughput":
            assert r.winner is None and r.text.startswith("no quality-meeting scheme has output tok/s within")


def test_crossovers_are_where_the_curves_cross():
    rg = build_report(REGIMES, min_recovery=LOOSE).leaderboards[0].regimes
    curves = _curves(REGIMES)
    for line in rg.crossovers:
        shape, rest = line.split(": ", 1)
        cell = rest.split(" ")[0]
        base = {lv["concurrency"]: lv["output_throughput"] for lv in curves["BF16"][shape]}
        signs = [lv["output_throughput"] > base[lv["concurrency"]] for lv in curves[cell][shape]
                 if lv["concurrency"] in base]
        flips = sum(a != b for a, b in zip(signs, signs[1:]))
        assert ("no crossover" in line) == (flips == 0), line
        if flips == 0:
            assert ("is faster than" in line) == signs[0], line
    assert len(rg.crossovers) == 2 * 3  # INT8-W8A8 and INT4-W4A16, three shapes each


def test_an_untimed_quality_meeting_scheme_is_named_with_what_it_saves(tmp_path):
    rep = build_report(V1, min_recovery=0.99)
    lb = rep.leaderboards[0]
    rows = {r.cell: r for r in lb.rows}
    untimed = [r for r in lb.rows if r.quality == "meets" and r.throughput_tok_s is None]
    assert [r.cell for r in untimed] == ["INT8-W8A16-RTN"]
    r, b = rows["INT8-W8A16-RTN"], rows["BF16"]
    saving = f"{r.weights_gb / b.weights_gb - 1:+.0%}"
    line = next(x for x in lb.regimes.untimed if x.startswith("INT8-W8A16-RTN:"))
    assert f"at {num(r.weights_gb)} GB of weights ({saving} vs BF16's {num(b.weights_gb)} GB)" in line
    assert "speed not measured here" in line
    # the baseline wins on offline throughput, and the recommendation still names the best quantized variant
    rec = lb.recommendation
    assert rec.cell == "BF16" and rec.best_quantized == "FP8-W8A8"
    q = rows["FP8-W8A8"]
    assert f"Best quantized: FP8-W8A8 meets the quality rule at {num(q.weights_gb)} GB" in rec.why
    assert f"runs at {num(q.throughput_tok_s)} output tok/s ({num(q.speedup)}x the baseline)" in rec.why


def test_report_slo_option(cli, tmp_path):
    p = cli("report", str(REGIMES), "-o", str(tmp_path / "r"), "--slo", "tpot:1000000", "--slo", "ttft:900000",
            "--format", "csv", env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # each target the command line gives replaces the experiment's
    assert "serving regimes (latency targets: ttft p99 ≤ 900000 ms, tpot p99 ≤ 1000000 ms)" in text
    assert "throughput (chat (256 in / 128 out)):" in text and "interactive:" in text and "capacity:" in text
    import pandas as pd

    pts = pd.read_csv(tmp_path / "r" / "serving_curves.csv")
    assert set(pts.cell) == {"BF16", "INT8-W8A8", "INT4-W4A16"} and pts.meets_slo.all()
    assert len(pts) == sum(len(lvs) for sh in _curves(REGIMES).values() for lvs in sh.values())
    for bad in ("tpot", "itl:5", "tpot:-1"):
        p = cli("report", str(REGIMES), "--slo", bad, env=CLI_ENV)
        assert p.returncode != 0 and p.stderr.strip().startswith("error: --slo") and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("root", [REGIMES, V1])
def test_every_regime_is_decided_among_quality_meeting_schemes(root):
    lb = build_report(root).leaderboards[0]
    ok = {r.cell for r in lb.rows if r.quality in ("meets", "baseline")}
    for r in lb.regimes.results:
        assert {s.cell for s in r.standings} <= ok
        assert r.winner is None or r.winner == r.standings[0].cell
