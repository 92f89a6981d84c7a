"""report: quality-only rows (POT / APOT, stored dense) get their own section with their effective size, are judged
but never ranked or recommended (even when they look best), and the bit-width curve is drawn. Compress and inspect
results are real (tiny model); evals and perf are synthetic with known numbers."""

import json

import pytest
from conftest import COMPRESS_RESULTS
from report_synth import answers, cloze_task, documents, eval_result, perf_result, ppl_task, put

from ptq_deploy.inspection import InspectConfig, inspect_checkpoint
from ptq_deploy.report import build_report, plots, render, write_report
from ptq_deploy.report.row import sig

GROUP = 64
PPL = 40.0
CELLS = {  # cell -> (cloze losses of 54/100, (ppl delta, stderr), perf tok/s or None)
    "BF16": (0, (0.0, 0.0), 100.0),
    "INT3-W3A16-RTN": (12, (9.0, 1.0), None),
    "POT-W4A16": (0, (0.0, 0.02), 900.0),  # as good as the baseline and "fastest": still never recommended
    "APOT-W3A16": (2, (1.5, 0.3), None),
}


@pytest.fixture(scope="module")
def report_dir(tiny_model, compressed, tmp_path_factory):
    root = tmp_path_factory.mktemp("bitwidth") / "results"
    root.mkdir()
    (root / "experiment.yaml").write_text("name: bitwidth-test\nbaseline: BF16\n")
    for cell, (losses, ppl, tok_s) in CELLS.items():
        ck = tiny_model if cell == "BF16" else compressed(cell, group_size=GROUP)
        if cell != "BF16":
            put(root, "tiny", cell, "compress", COMPRESS_RESULTS[str(ck)])
        put(root, "tiny", cell, "inspect", inspect_checkpoint(InspectConfig(checkpoint=ck)))
        backend = "hf" if cell.startswith("INT") else "vllm"
        tasks = [cloze_task(answers(100, 54, 0, losses)), ppl_task(documents(PPL, *ppl))]
        put(root, "tiny", cell, "eval", eval_result("tiny", cell, tasks, backend=backend))
        if cell == "BF16":
            put(root, "tiny", cell, "eval-hf", eval_result("tiny", cell, tasks, backend="hf"))
        if tok_s:
            put(root, "tiny", cell, "perf", perf_result("tiny", cell, tok_s, 1e6))
        elif cell.startswith("INT"):
            put(root, "tiny", cell, "perf", status="not_runnable", reason="no CPU kernel takes int3 weights")
        else:
            put(root, "tiny", cell, "perf", status="not_applicable", reason="not applicable: quality only (stored dense)")
    return root


@pytest.fixture(scope="module")
def report(report_dir):
    return build_report(report_dir)


def test_quality_only_rows_are_judged_apart_and_never_recommended(report, report_dir):
    lb = report.leaderboards[0]
    assert [r.cell for r in lb.rows] == ["BF16", "INT3-W3A16-RTN"]
    assert [r.cell for r in lb.quality_only] == ["POT-W4A16", "APOT-W3A16"]  # most bits first
    pot, apot = lb.quality_only
    assert pot.quality == "meets" and pot.throughput_tok_s == 900  # it would win on every count ...
    rec = lb.recommendation
    assert rec.cell == "BF16" and "POT-W4A16" not in rec.candidates  # ... yet it is not a candidate
    assert not {"POT-W4A16", "APOT-W3A16"} & {*rec.excluded, *rec.inconclusive}
    assert all(r.quality_only and r.rank is None and not r.pareto for r in lb.quality_only)
    assert not any(r.quality_only for r in lb.rows)
    assert {r.cell: r.method for r in report.rows()} == {"BF16": None, "INT3-W3A16-RTN": "RTN", "POT-W4A16": "POT",
                                                          "APOT-W3A16": "APOT"}
    # sizes: the codes + scales the checkpoint declares, against the dense bytes it stores
    meta = json.loads((report_dir / "results/tiny/POT-W4A16/compress.json").read_text())["checkpoint"]["fake_quant"]
    insp = json.loads((report_dir / "results/tiny/POT-W4A16/inspect.json").read_text())
    assert pot.bits_per_weight == 4 + 16 / GROUP and apot.bits_per_weight == 3 + 16 / GROUP
    assert pot.weights_gb == sig(insp["tensor_bytes"] / 1e9)
    assert pot.effective_gb == sig((insp["tensor_bytes"] - meta["stored_bytes"] + meta["code_bytes"]
                                    + meta["scale_bytes"]) / 1e9) < pot.weights_gb / 2
    int3 = lb.rows[1]
    assert 3.25 <= int3.bits_per_weight < 3.3 and int3.effective_gb == int3.weights_gb  # packed: stored = effective


def test_the_report_files_show_the_section_and_the_curve(report, tmp_path):
    written = write_report(report, tmp_path)
    assert (tmp_path / "plots" / "bitwidth_curve.png") in written and plots.has_curve(report)
    md = (tmp_path / "leaderboard.md").read_text()
    ranked, section = md.split(f"### {render.QUALITY_ONLY}")
    assert "POT-W4A16" not in ranked.split("Notes:")[0]  # neither in the ranked tables nor the recommendation
    table = [ln for ln in section.splitlines() if ln.startswith("| POT-W4A16")]
    lb = report.leaderboards[0]
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    headers = [c.header for c in render.quality_only_columns(lb)]
    assert dict(zip(headers, cells))["effective GB"] == f"{lb.quality_only[0].effective_gb:g}"
    assert dict(zip(headers, cells))["bits/weight"] == "4.25" and dict(zip(headers, cells))["method"] == "POT"
    assert "APOT-W3A16 perf: not applicable: quality only (stored dense)" in md
    assert render.QUALITY_ONLY in (tmp_path / "report.html").read_text()
    csv = (tmp_path / "leaderboard.csv").read_text()
    assert csv.count("\n") == 5 and "quality_only" in csv.splitlines()[0]
