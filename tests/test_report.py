"""report: leaderboards from a results dir built with the real steps (tiny model, BF16 + FP8-W8A8) plus
synthetic variants with known numbers (ranking, recommendation, outcomes, Markdown == JSON, HTML)."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from report_synth import CLI_ENV, answers, cloze_task, documents, eval_result, ppl_task, put

from ptq_deploy.errors import UsageError
from ptq_deploy.report import build_report, compare_reports, render, write_comparison, write_report
from ptq_deploy.report.fmt import num
from ptq_deploy.report.leaderboard import pareto
from ptq_deploy.report.row import flat, to_frame
from ptq_deploy.stats import Summary
from ptq_deploy.suite.layout import result_file

INT4_REASON = "INT4-W4A16 needs the AVX-512 build of vLLM (CPU WNA16 kernels); this CPU has AVX2 only"


# ---------------------------------------------------------------- real steps on the tiny model
@pytest.fixture(scope="module")
def real_results(serial_run, tiny_suite) -> Path:
    """The session's real run of ``tiny_suite`` (``serial_run``: BF16, the calibration-free scheme vLLM runs
    fastest here, INT8-W8A16-RTN; compress, inspect, perf and eval through the suite), read, never re-run."""
    return serial_run


def _read(root: Path, cell: str, step: str, model: str = "tiny"):
    from ptq_deploy.eval.result import EvalResult
    from ptq_deploy.perf.result import PerfResult

    return {"perf": PerfResult, "eval": EvalResult}[step].model_validate_json(
        result_file(root, model, cell, step).read_text())


# ---------------------------------------------------------------- synthetic variants with known numbers
N_DOCS, CORRECT, PPL = 100, 54, 145.8
SYNTH = {  # cell -> ((cloze gains, losses) vs BF16's 54 of 100, (ppl delta, stderr), tok/s, weights bytes, kv)
    "BF16": ((0, 0), (0.0, 0.0), 100.0, 400e6, "none"),
    "FP8-W8A8": ((0, 1), (0.2, 0.1), 150.0, 200e6, "none"),  # 98.1% on cloze, inside the noise: inconclusive
    "INT8-W8A8": ((0, 0), (0.1, 0.05), 180.0, 250e6, "none"),
    "FP8-W8A8+kv-fp8": ((0, 0), (0.3, 0.1), 120.0, 200e6, "fp8"),
    "INT8-W8A16": ((0, 34), (40.0, 3.0), 300.0, 250e6, "none"),  # fastest, but fails both
}
EVAL_ONLY = {  # cell -> (cloze gains, losses), (ppl delta, stderr): accuracy measured, no perf (not runnable here)
    "INT4-W4A16-RTN": ((3, 0), (50.0, 4.0)),  # best cloze score, but its perplexity fails
    "INT4-W4A16-AWQ": ((0, 0), (0.2, 0.1)),
}
EXPECTED_ORDER = ["BF16", "INT8-W8A8", "FP8-W8A8+kv-fp8", "INT4-W4A16-AWQ", "FP8-W8A8", "INT8-W8A16",
                  "INT4-W4A16-RTN", "INT4-W4A16"]


def _synth_eval(cell: str, cloze: tuple[int, int], ppl: tuple[float, float], kv: str = "none"):
    return eval_result("synth", cell, [cloze_task(answers(N_DOCS, CORRECT, *cloze)), ppl_task(documents(PPL, *ppl))],
                       kv_cache_dtype="fp8" if kv != "none" else "auto")


def _synth_perf(base_perf, tok_s: float, weights: float):
    tp = base_perf.throughput
    return base_perf.model_copy(update={
        "model": "synth",
        "throughput": tp.model_copy(update={"output_tokens_per_s": Summary.of([tok_s * 0.98, tok_s, tok_s * 1.02], "tok/s")}),
        "memory": base_perf.memory.model_copy(update={"weight_bytes_checkpoint": int(weights)})})


@pytest.fixture(scope="module")
def results(real_results, tmp_path_factory) -> Path:
    """The real results plus a second model "synth" with controlled numbers and a not-runnable cell."""
    root = tmp_path_factory.mktemp("report-synth") / "results"
    shutil.copytree(real_results, root, ignore=shutil.ignore_patterns("checkpoints"))
    base_perf = _read(real_results, "BF16", "perf")
    for cell, (cloze, ppl, tok_s, weights, kv) in SYNTH.items():
        put(root, "synth", cell, "eval", _synth_eval(cell, cloze, ppl, kv), kv=kv)
        put(root, "synth", cell, "perf", _synth_perf(base_perf, tok_s, weights), kv=kv)
    for cell, (cloze, ppl) in EVAL_ONLY.items():
        put(root, "synth", cell, "compress", status="ok")
        put(root, "synth", cell, "perf", status="not_runnable", reason=INT4_REASON)
        put(root, "synth", cell, "eval", _synth_eval(cell, cloze, ppl))
    put(root, "synth", "INT4-W4A16", "compress", status="ok")
    for step in ("perf", "eval"):
        put(root, "synth", "INT4-W4A16", step, status="not_runnable", reason=INT4_REASON)
    return root


@pytest.fixture(scope="module")
def report(results):
    return build_report(results)


@pytest.fixture(scope="module")
def written(report, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-out")
    write_report(report, out)
    return out


def _lb(rep, model):
    return next(lb for lb in rep.leaderboards if lb.model == model)


# ---------------------------------------------------------------- tests
def test_real_rows_have_every_figure(report, quick_quant, tiny_suite):
    tasks, limit, iterations = tiny_suite["eval"]["tasks"], tiny_suite["eval"]["limit"], tiny_suite["perf"]["iterations"]
    lb = _lb(report, "tiny")
    rows = {r.cell: r for r in lb.rows}
    assert rows.keys() == set(tiny_suite["schemes"]) and lb.baseline == "BF16" and lb.rows[0].cell == "BF16"
    base, quant = rows["BF16"], rows[quick_quant[0]]
    assert base.baseline and base.rank == 1 and base.verdict == "baseline" and base.worst_recovery_pct == 100
    assert base.quality == "baseline"
    assert base.speedup == 1 and base.compress_s > 0  # the run's BF16 copy is its own compress step
    assert set(base.tasks) == set(tasks) and base.eval_backend == "vllm"
    for r in (base, quant):
        assert r.status_text == "ok" and r.acc_avg is not None and r.acc_avg_stderr is not None
        assert r.ppl is not None and r.ppl > 1 and r.ppl_task == "austen_ppl"
        assert r.throughput_tok_s > 0 and r.throughput_n == iterations
        assert r.ttft_p50_ms > 0 and r.tpot_p99_ms > 0 and r.latency_source == "offline, batch 1"
        assert r.weights_gb > 0 and r.memory_gb > 0 and r.roofline_pct is not None
    assert quant.compress_s > 0 and quant.weights_gb < base.weights_gb
    for t in tasks:  # every quality measure has a recovery with its interval, and an outcome
        ts = quant.tasks[t]
        assert ts.method.startswith("paired bootstrap") and ts.n == limit
        assert ts.recovery_low_pct <= ts.recovery_pct <= ts.recovery_high_pct
        lo, hi = ts.recovery_low_pct, ts.recovery_high_pct  # the verdict and outcome follow from the interval
        assert ts.verdict == ("improved" if lo > 100 else "regressed" if hi < 100 else "not distinguishable") \
            or min(abs(lo - 100), abs(hi - 100)) < 0.01  # an edge the rounding to 4 digits decides
        assert ts.outcome == ("meets" if lo >= 99 else "fails" if hi < 99 else "inconclusive")
        assert ts.min_recovery_pct == 99
    assert quant.worst_recovery_pct == min(quant.tasks[t].recovery_pct for t in tasks)
    headers = [c.header for c in render.columns(lb)]
    for t in tasks:  # the table says how many documents each comparison pairs
        assert f"{t} {quant.tasks[t].metric} (n={quant.tasks[t].n})" in headers, headers
    outcomes = {quant.tasks[t].outcome for t in tasks}
    assert quant.ppl_delta is not None
    assert quant.quality == next(q for q in ("fails", "inconclusive", "meets") if q in outcomes)
    assert quant.speedup == pytest.approx(quant.throughput_tok_s / base.throughput_tok_s, rel=1e-3)


def test_ranking_order_and_outcomes(report):
    lb = _lb(report, "synth")
    assert [r.cell for r in lb.rows] == EXPECTED_ORDER, [(r.cell, r.quality, r.quality_note) for r in lb.rows]
    assert [r.rank for r in lb.rows] == list(range(1, 9))
    q = {r.cell: r.quality for r in lb.rows}
    assert q == {"BF16": "baseline", "INT8-W8A8": "meets", "FP8-W8A8+kv-fp8": "meets", "INT4-W4A16-AWQ": "meets",
                 "FP8-W8A8": "inconclusive", "INT8-W8A16": "fails", "INT4-W4A16-RTN": "fails",
                 "INT4-W4A16": "unmeasured"}
    rows = {r.cell: r for r in lb.rows}
    cloze = {c: r.tasks["austen_cloze"].verdict for c, r in rows.items() if r.tasks}
    assert cloze["INT8-W8A16"] == "regressed" and cloze["INT4-W4A16-RTN"] == "not distinguishable"
    assert rows["INT4-W4A16-RTN"].tasks["austen_ppl"].verdict == "regressed"
    assert rows["INT4-W4A16-RTN"].quality_note.startswith("austen_ppl ")  # the binding measure, not cloze
    assert rows["FP8-W8A8"].tasks["austen_cloze"].recovery_pct == pytest.approx(53 / 54 * 100, abs=0.01)
    assert rows["FP8-W8A8"].speedup == 1.5 and rows["INT8-W8A16"].ppl_delta > 0  # perplexity got worse
    assert rows["FP8-W8A8+kv-fp8"].tasks["austen_cloze"].recovery_pct == 100  # compared despite the KV dtype
    int4 = rows["INT4-W4A16"]
    assert int4.status == {"compress": "ok", "perf": "not_runnable", "eval": "not_runnable"}
    assert int4.reasons["perf"] == INT4_REASON and "not runnable here" in int4.status_text
    assert int4.throughput_tok_s is None and int4.worst_recovery_pct is None
    assert pareto(lb.rows) == {r.cell for r in lb.rows if r.pareto} == {"BF16", "INT8-W8A8", "INT8-W8A16"}


@pytest.mark.parametrize("cons, expected", [
    ({}, "INT8-W8A8"),  # 99% on every measure: the fastest scheme whose intervals clear it
    ({"min_recovery": 0.9, "max_memory_gb": 0.22}, "FP8-W8A8"),
    ({"min_recovery": 0.2}, "INT8-W8A16"),  # the user accepts a big loss: the fastest wins
    ({"min_recovery": 0.99, "max_memory_gb": 0.1}, None),
    ({"min_throughput": 1000}, None),
])
def test_recommendation_under_constraints(results, cons, expected):
    rec = _lb(build_report(results, bootstrap_iters=200, **cons), "synth").recommendation
    assert rec.cell == expected
    assert "." in rec.why and rec.why.count(". ") == 0  # one sentence
    if expected:
        assert rec.why.startswith(expected) and "tok/s" in rec.why
    else:
        assert rec.why.startswith("No scheme meets")
    assert set(rec.candidates) | set(rec.excluded) | set(rec.inconclusive) == set(EXPECTED_ORDER)
    assert all(why for why in [*rec.excluded.values(), *rec.inconclusive.values()])


_NUM = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _md_tables(md: str) -> dict[str, list[list[list[str]]]]:
    """model -> its tables (each a list of rows of cells), in the order of the Markdown."""
    out, model = {}, None
    for line in md.splitlines():
        if line.startswith("## ") and "(baseline" in line:
            model = line[3:].split(" (baseline")[0]
            out[model] = []
        elif model and line.startswith("### "):
            out[model].append([])
        elif model and line.startswith("|") and not set(line) <= set("|-: "):
            out[model][-1].append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def test_every_markdown_number_equals_the_json(written):
    md = (written / "leaderboard.md").read_text()
    data = json.loads((written / "report.json").read_text())
    from ptq_deploy.report.leaderboard import Report

    rep = Report.model_validate(data)
    tables = _md_tables(md)
    checked = 0
    for lb in rep.leaderboards:
        assert len(tables[lb.model]) == len(render.GROUPS) + (lb.regimes is not None)  # + the serving regimes
        shown = set()
        for (header, *rows), group in zip(tables[lb.model], render.GROUPS):
            cols = render.group_columns(lb, group)
            assert header == [c.header for c in cols]
            assert len(rows) == len(lb.rows)
            shown |= {c.header for c in cols}
            for md_row, row in zip(rows, lb.rows):
                assert md_row[1].startswith(row.cell)
                values = flat(row)
                for text, col in zip(md_row, cols):
                    if not col.fields:
                        continue
                    expected = [values[f] for f in col.fields if values.get(f) is not None]
                    got = [float(x) for x in _NUM.findall(text)]
                    assert got == expected, (lb.model, row.cell, col.header, text, expected)
                    checked += len(got)
        assert shown == {c.header for c in render.columns(lb)}  # every column is in one of the tables
        rec = lb.recommendation
        assert f"**Recommendation:** {rec.why}" in md
        assert all(f"- {c}: {why}" in md for c, why in [*rec.excluded.items(), *rec.inconclusive.items()])
    assert checked > 100
    assert "inconclusive" in md and "regressed" in md and INT4_REASON in md
    assert "![quality_vs_throughput](plots/quality_vs_throughput.png)" in md


def test_csv_and_frame_match_the_json(written, report, tiny_suite):
    import pandas as pd

    csv = pd.read_csv(written / "leaderboard.csv")
    synth = len(SYNTH) + len(EVAL_ONLY) + 1  # + INT4-W4A16, not runnable
    assert len(csv) == len(report.rows()) == len(tiny_suite["schemes"]) + synth
    for r, (_, c) in zip(report.rows(), csv.iterrows()):
        assert (c["model"], c["cell"], c["rank"]) == (r.model, r.cell, r.rank)
        for f in ("worst_recovery_pct", "throughput_tok_s", "weights_gb", "tasks.austen_cloze.value",
                  "tasks.austen_ppl.recovery_low_pct"):
            v = flat(r).get(f)
            assert (pd.isna(c[f]) and v is None) or c[f] == pytest.approx(v, rel=1e-12), (r.cell, f)
    assert list(to_frame(report.rows())["cell"]) == list(csv["cell"])


def test_plots_written_and_survive_missing_data(written, report, tmp_path):
    from PIL import Image

    from ptq_deploy.report import plots

    for name in plots.PLOTS:
        img = Image.open(written / "plots" / f"{name}.png")
        assert img.size[0] > 600 and len(img.convert("RGB").getcolors(1 << 20)) > 50
    empty = report.model_copy(deep=True)
    for lb in empty.leaderboards:  # every figure missing: each plot says "no data", none crashes
        lb.rows = [r.model_copy(update={k: None for k in type(r).model_fields if k.endswith(("_ms", "_gb", "_pct", "_tok_s"))
                                        or k in ("acc_avg", "acc_avg_stderr")} | {"tasks": {}}) for r in lb.rows]
    assert all(png.startswith(b"\x89PNG") for png in plots.render_all(empty).values())


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_opens_in_headless_chromium(written, tmp_path):
    from PIL import Image

    page = written / "report.html"
    html = page.read_text()
    assert "<img" in html and "data:image/png;base64," in html and "src='plots/" not in html  # self-contained
    assert "<table" in html and "INT8-W8A16" in html and "Recommendation" in html
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tempfile.mkdtemp()}", f"--screenshot={shot}", "--window-size=1400,2000",
                    page.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 2000)
    colours = img.getcolors(1 << 22)
    assert len(colours) > 500  # text, table shading and plots, not a blank page
    white = max(n for n, c in colours if c == (255, 255, 255)) if any(c == (255, 255, 255) for _, c in colours) else 0
    assert white < 0.9 * img.size[0] * img.size[1]


def test_compare_two_result_sets(results, report, tmp_path):
    b_dir = tmp_path / "b"
    shutil.copytree(results, b_dir)
    perf = _read(results, "FP8-W8A8", "perf", model="synth")
    put(b_dir, "synth", "FP8-W8A8", "perf", _synth_perf(perf, 200.0, 200e6))
    shutil.rmtree(b_dir / "steps" / "synth" / "INT4-W4A16")
    comp = compare_reports(report, build_report(b_dir, bootstrap_iters=200))
    rows = {(r.model, r.cell): r for r in comp.rows}
    fp8 = rows["synth", "FP8-W8A8"]
    assert fp8.a["throughput_tok_s"] == 150 and fp8.b["throughput_tok_s"] == 200 and fp8.delta["throughput_tok_s"] == 50
    assert fp8.delta["speedup"] == 0.5 and fp8.delta["weights_gb"] == 0
    assert rows["synth", "INT4-W4A16"].only_in == "a"
    paths = write_comparison(comp, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert {p.name for p in paths} == {"compare.md", "compare.json", "compare.csv", "compare.html"}
    assert "150 → 200 (+50)" in md and "INT4-W4A16 (only in A)" in md


def test_errors_are_one_line(cli, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_report(tmp_path / "nope")
    with pytest.raises(UsageError, match="no suite results"):
        build_report(tmp_path)
    for args in (["report", str(tmp_path / "nope")], ["report", str(tmp_path)],
                 ["report", str(tmp_path), "--format", "pdf"], ["report", str(tmp_path), "--min-recovery", "99"]):
        p = cli(*args, env=CLI_ENV)
        err = p.stderr.strip()
        assert p.returncode != 0 and "Traceback" not in p.stderr + p.stdout
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err


def test_cli_report_and_compare(cli, results, tmp_path):
    p = cli("report", str(results), "-o", str(tmp_path / "r"), "--min-recovery", "0.9", "--max-memory-gb", "0.22",
            env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    assert "recommendation:" in p.stdout and "FP8-W8A8: the fastest" in p.stdout.replace("\n", " ")
    real = next(lb for lb in build_report(results).leaderboards if lb.model == "tiny")
    measured = [r for r in real.rows if r.throughput_tok_s is not None]
    assert measured and all(r.throughput_n == 1 for r in measured)  # one iteration: no spread to show
    for r in measured:  # the console leaderboard carries each measured throughput (not a synth figure)
        assert re.search(rf"│\s*{re.escape(num(r.throughput_tok_s))}\s*│", p.stdout), r.cell
    assert {f.name for f in (tmp_path / "r").iterdir()} >= {"leaderboard.md", "report.json", "leaderboard.csv",
                                                           "report.html", "plots"}
    p = cli("report", str(results), str(results), "-o", str(tmp_path / "c"), "--format", "md,json", env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == ["compare.json", "compare.md"]
