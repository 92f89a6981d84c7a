"""report: every quality measure counts. Recoveries tested for non-inferiority on their paired-bootstrap
interval (meets / fails / inconclusive, with how much more data), per-task constraints from the command
line and the experiment file, the recommendation's exclusions, and plots / HTML led by what separates the
schemes. Synthetic results only (no engine): the ready experiment's last measured numbers, and cases
built to sit on either side of a threshold."""

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from report_synth import CLI_ENV, answers, cloze_task, documents, eval_result, perf_result, ppl_task, put

from ptq_deploy.errors import UsageError
from ptq_deploy.eval import recovery
from ptq_deploy.report import build_report, resolve_settings, write_report
from ptq_deploy.report.noninferiority import more_docs
from ptq_deploy.report.settings import ReportSettings, parse_min_recovery
from ptq_deploy.suite.experiment import Experiment

BASE_PPL, CLOZE_N, CLOZE_OK = 145.8, 100, 54
# the ready experiment's last full run: word-perplexity delta ± paired stderr, cloze (gains, losses) vs BF16
# (recoveries 100-106%), and made-up speeds where INT4-W4A16-RTN is the fastest
READY = {
    "INT8-W8A16-RTN": ((0.31, 0.14), (1, 1), 150.0, 0.16e9),
    "INT8-W8A16": ((0.43, 0.09), (1, 0), 160.0, 0.16e9),
    "INT8-W8A8": ((4.44, 0.60), (2, 1), 130.0, 0.16e9),
    "FP8-W8A8": ((4.97, 0.57), (2, 0), 60.0, 0.16e9),
    "INT4-W4A16": ((21.3, 1.9), (3, 1), 260.0, 0.11e9),
    "INT4-W4A16-AWQ": ((26.4, 2.4), (3, 0), 280.0, 0.11e9),
    "INT4-W4A16-RTN": ((56.2, 4.4), (4, 1), 300.0, 0.11e9),
}
MODEL = "smollm2-135m"


def _cell(root: Path, cell: str, cloze, ppl, tok_s: float | None = None, weights: float = 0.16e9, model=MODEL):
    put(root, model, cell, "eval", eval_result(model, cell, [cloze, ppl]))
    if tok_s is not None:
        put(root, model, cell, "perf", perf_result(model, cell, tok_s, weights))


def _baseline(root: Path, cloze=None, model: str = MODEL) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.yaml").write_text(f"name: {model}\nbaseline: BF16\n")
    _cell(root, "BF16", cloze or cloze_task(answers(CLOZE_N, CLOZE_OK)), ppl_task(documents(BASE_PPL)), 100.0,
          0.27e9, model)


@pytest.fixture(scope="module")
def ready(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ready") / "results"
    _baseline(root)
    for cell, ((d, se), (g, lost), tok_s, weights) in READY.items():
        _cell(root, cell, cloze_task(answers(CLOZE_N, CLOZE_OK, g, lost)), ppl_task(documents(BASE_PPL, d, se)),
              tok_s, weights)
    return root


@pytest.fixture(scope="module")
def ready_report(ready):
    return build_report(ready, min_recovery_by_task={"austen_ppl": 0.97})


def _rows(rep):
    return {r.cell: r for r in rep.leaderboards[0].rows}


def test_ready_experiment_intervals_are_measured(ready_report):
    rows = _rows(ready_report)
    for cell, ((d, se), *_rest) in READY.items():
        r = rows[cell]
        assert r.ppl_delta == pytest.approx(d, rel=1e-3)
        assert r.ppl_delta_stderr == pytest.approx(se, rel=0.2), cell  # the paired bootstrap's own measure
        ts = r.tasks["austen_ppl"]
        assert ts.method.startswith("paired bootstrap") and ts.n == 24 and ts.verdict == "regressed"
        assert ts.recovery_low_pct < ts.recovery_pct == pytest.approx(BASE_PPL / (BASE_PPL + d) * 100, abs=0.01)
        assert ts.recovery_pct < ts.recovery_high_pct
        assert 100 <= r.tasks["austen_cloze"].recovery_pct <= 106
        assert r.worst_task == "austen_ppl"  # the measure that separates the schemes leads
    assert ready_report.leaderboards[0].tasks[0] == "austen_ppl"


def test_ready_experiment_97pct_perplexity(ready_report):
    rows = _rows(ready_report)
    ppl = {c: rows[c].tasks["austen_ppl"].outcome for c in READY}
    assert ppl["INT4-W4A16-RTN"] == ppl["INT4-W4A16-AWQ"] == ppl["INT4-W4A16"] == "fails"
    assert ppl["INT8-W8A16-RTN"] == ppl["INT8-W8A16"] == "meets"
    assert ppl["INT8-W8A8"] == ppl["FP8-W8A8"] == "inconclusive"  # 97.0% and 96.7%, intervals across 97%
    assert rows["FP8-W8A8"].tasks["austen_ppl"].more_docs > 0
    rec = ready_report.leaderboards[0].recommendation
    assert rec.cell not in ("INT4-W4A16-RTN", "INT4-W4A16-AWQ", "INT4-W4A16")  # the fastest, but they fail
    assert rec.cell in rec.candidates and all(rows[c].quality in ("meets", "baseline") for c in rec.candidates)
    for cell in ("INT4-W4A16-RTN", "INT4-W4A16-AWQ", "INT4-W4A16"):
        why = rec.excluded[cell]
        r = rows[cell].tasks["austen_ppl"]
        assert why.startswith(f"austen_ppl {r.recovery_pct}% (95% CI {r.recovery_low_pct}–") and why.endswith("< 97%")
    others = {r.cell for r in rows.values()} - set(rec.candidates)
    assert others == set(rec.excluded) | set(rec.inconclusive) and not set(rec.excluded) & set(rec.inconclusive)
    assert all("more documents needed" in why or "cannot decide" in why for why in rec.inconclusive.values())
    assert rec.decided_by["austen_ppl"] >= 3
    assert "austen_ppl ≥ 97%" in ready_report.constraints.describe()


def test_an_interval_the_whole_task_cannot_narrow_enough_says_so(tmp_path):
    whole = {"effective": CLOZE_N, "original": CLOZE_N}  # every document of the task scored
    cand = cloze_task(answers(CLOZE_N, CLOZE_OK, gains=3, losses=4)).model_copy(update={"n_samples": whole})
    root = tmp_path / "results"
    _baseline(root, cloze_task(answers(CLOZE_N, CLOZE_OK)).model_copy(update={"n_samples": whole}))
    _cell(root, "CAND", cand, ppl_task(documents(BASE_PPL, 0.1, 0.05)), 500.0)
    r = _rows(build_report(root))["CAND"]
    ts = r.tasks["austen_cloze"]
    assert ts.outcome == "inconclusive" and ts.task_docs == CLOZE_N and ts.n + ts.more_docs > CLOZE_N
    assert (f"this task cannot resolve it (~{ts.n + ts.more_docs} documents needed, it holds {CLOZE_N})"
            in r.quality_note) and "more documents needed" not in r.quality_note


def _one_candidate(tmp_path: Path, cloze, ppl, tok_s: float = 500.0):
    root = tmp_path / "results"
    _baseline(root)
    _cell(root, "CAND", cloze, ppl, tok_s)
    rep = build_report(root)
    return rep, _rows(rep)["CAND"]


def test_accuracy_below_threshold_inside_the_noise_is_inconclusive(tmp_path):
    cand = answers(CLOZE_N, CLOZE_OK, gains=3, losses=4)  # 53 vs 54 of 100: 98.1%, below 99% but noisy
    _, r = _one_candidate(tmp_path, cloze_task(cand), ppl_task(documents(BASE_PPL, 0.1, 0.05)))
    ts = r.tasks["austen_cloze"]
    assert ts.recovery_pct < 99 < ts.recovery_high_pct and ts.verdict == "not distinguishable"
    assert ts.outcome == "inconclusive" and r.quality == "inconclusive"
    assert r.tasks["austen_ppl"].outcome == "meets"
    assert ts.more_docs == more_docs(ts, 99) > 0 and f"~{ts.more_docs} more documents needed" in r.quality_note
    # the estimate is meaningful: with 1.5x that many documents (same answers, repeated) the test decides
    k = math.ceil(1.5 * (ts.n + ts.more_docs) / ts.n)
    root = tmp_path / "more"
    _baseline(root, cloze_task(answers(CLOZE_N, CLOZE_OK) * k))
    _cell(root, "CAND", cloze_task(cand * k), ppl_task(documents(BASE_PPL, 0.1, 0.05)))
    more = _rows(build_report(root, bootstrap_iters=300))["CAND"].tasks["austen_cloze"]
    assert more.n == CLOZE_N * k and more.recovery_pct == ts.recovery_pct and more.outcome == "fails"


def test_perplexity_regression_fails_while_accuracy_holds(tmp_path):
    rep, r = _one_candidate(tmp_path, cloze_task(answers(CLOZE_N, CLOZE_OK, gains=2)),
                            ppl_task(documents(BASE_PPL, 20.0, 2.0)))
    assert r.tasks["austen_cloze"].verdict != "regressed" and r.tasks["austen_cloze"].recovery_pct > 100
    assert r.tasks["austen_ppl"].outcome == "fails" and r.quality == "fails"
    rec = rep.leaderboards[0].recommendation
    assert rec.cell == "BF16" and rec.excluded["CAND"].startswith("austen_ppl ") and "< 99%" in rec.excluded["CAND"]
    assert rec.decided_by == {"austen_ppl": 1}


def test_a_recovery_without_interval_is_unknown_never_a_pass(tmp_path):
    bare = ppl_task(documents(BASE_PPL), per_sample=False)  # no per-document values, no stderr
    same = recovery.compare_task(ppl_task(documents(BASE_PPL)), bare)
    assert same.ci95 is None and same.verdict == "unknown" and same.recovery == 1
    root = tmp_path / "results"
    _baseline(root)
    _cell(root, "NOCI", cloze_task(answers(CLOZE_N, CLOZE_OK)), bare, 900.0)  # identical, and the fastest
    _cell(root, "BAD", cloze_task(answers(CLOZE_N, CLOZE_OK)), ppl_task(documents(BASE_PPL, 30.0, 2.0)), 50.0)
    put(root, MODEL, "NOEVAL", "eval", status="not_runnable", reason="needs AVX-512")
    lb = build_report(root, min_recovery=0.9).leaderboards[0]
    r = _rows(build_report(root, min_recovery=0.9))["NOCI"]
    ts = r.tasks["austen_ppl"]
    assert ts.recovery_pct == 100 and ts.recovery_low_pct is None and ts.verdict == "unknown"
    assert ts.outcome == "inconclusive" and r.quality == "inconclusive" and "no interval" in r.quality_note
    assert lb.recommendation.cell != "NOCI" and "NOCI" in lb.recommendation.inconclusive
    assert lb.recommendation.excluded["BAD"].startswith("austen_ppl ")
    assert [x.cell for x in lb.rows] == ["BF16", "BAD", "NOCI", "NOEVAL"]  # with the unmeasured, after a failure
    assert "eval not runnable here" in lb.recommendation.excluded["NOEVAL"]


def test_constraint_sources_and_precedence(ready, tmp_path):
    assert resolve_settings(ready) == (ReportSettings(), "defaults")
    root = tmp_path / "results"
    shutil.copytree(ready, root)
    exp = Experiment(name="x", models=[{"name": MODEL, "source": "default"}], schemes=["BF16"],
                     report={"min_recovery_by_task": {"austen_ppl": 0.97}, "max_memory_gb": 0.2})
    (root / "experiment.yaml").write_text(json.dumps(exp.model_dump(mode="json")))
    s, src = resolve_settings(root, min_recovery=0.95)
    assert src == "experiment.yaml + command line"
    assert (s.threshold("austen_ppl"), s.threshold("austen_cloze"), s.max_memory_gb) == (0.97, 0.95, 0.2)
    s, _ = resolve_settings(root, min_recovery_by_task={"austen_ppl": 0.9})
    assert s.threshold("austen_ppl") == 0.9 and s.threshold("austen_cloze") == 0.99
    rep = build_report(root)
    assert rep.constraints_from == "experiment.yaml" and rep.constraints.threshold("austen_ppl") == 0.97
    assert "BF16" in rep.leaderboards[0].recommendation.excluded  # 0.27 GB of weights > 0.2
    with pytest.raises(UsageError, match=r"austen_pl: no such task.*did you mean austen_ppl.*Available: austen_cloze"):
        build_report(ready, min_recovery_by_task={"austen_pl": 0.97})
    (root / "experiment.yaml").write_text("name: x\nreport:\n  min_recovry: 0.9\n")
    with pytest.raises(UsageError, match="report.min_recovry"):
        build_report(root)
    with pytest.raises(ValueError):
        Experiment(name="x", models=[{"name": "m", "source": "default"}], schemes=["BF16"], report={"nope": 1})


def test_parse_min_recovery():
    assert parse_min_recovery(None) == (None, {})
    assert parse_min_recovery(["0.97", "austen_ppl=0.9", "austen_ppl=0.95"]) == (0.97, {"austen_ppl": 0.95})
    for bad in ("97", "x", "=0.9", "austen_ppl=1.5"):
        with pytest.raises(UsageError, match="--min-recovery"):
            parse_min_recovery([bad])


def test_plots_lead_with_quality_loss(ready_report, tmp_path):
    from matplotlib.figure import Figure
    from PIL import Image

    from ptq_deploy.report import plots

    written = write_report(ready_report, tmp_path, formats="md")
    assert [p.stem for p in written if p.suffix == ".png"] == list(plots.PLOTS)
    for name in plots.PLOTS:
        img = Image.open(tmp_path / "plots" / f"{name}.png").convert("RGB")
        assert img.size[0] >= 600 and len(img.getcolors(1 << 20)) > 50
    # the per-task view: one panel per task, side by side
    img = Image.open(tmp_path / "plots" / "recovery_by_task.png").convert("RGB")
    assert img.size[0] >= 2 * 400
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Excluded:" in md and "Inconclusive (more data needed):" in md
    rec = ready_report.leaderboards[0].recommendation
    others = len(rec.candidates) + len(rec.excluded) + len(rec.inconclusive) - 1
    assert (f"Measures that excluded or left undecided a scheme:\n\n- austen_ppl: {rec.decided_by['austen_ppl']} of "
            f"the {others} other schemes") in md
    lb = ready_report.leaderboards[0].model_copy(deep=True)  # schemes without speed numbers: on the size plot
    for r in lb.rows:
        r.throughput_tok_s = r.throughput_tok_s_stdev = None
    ax = Figure().subplots()
    assert plots.worst_scatter(ax, lb, lambda r: r.throughput_tok_s, lambda r: None) == []
    assert [r.cell for r in plots.worst_scatter(ax, lb, lambda r: r.weights_gb, lambda r: None)] == \
        [r.cell for r in lb.rows]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _widest_kv_section():
    """A KV section as wide as the report makes one: every registered method with every column filled."""
    from ptq_deploy.kvcache import methods
    from ptq_deploy.kvcache.result import Delta
    from ptq_deploy.report.kv import KVCapacity, KVRow, KVSection

    d = Delta(baseline=12.3456, value=12.9876, delta=-0.6421, stderr=0.1234, ci95=(-0.8765, -0.4321), n=15,
              verdict="regressed")
    rows = [KVRow(method=m, quality_only=methods.get(m).family != "vllm", passkey_accuracy=0.9333, passkey_n=15,
                  passkey={}, passkey_delta=d, longdoc_ppl=12.9876, longdoc_delta=d, generation_ppl=3.4567,
                  generation_delta=d, agreement=0.9876, bytes_per_token=13824.0, bytes_ratio=0.2656,
                  logit_max_abs_diff=12.345, kl=0.01234) for m in methods.names()]
    cap = [KVCapacity(cell="INT4-W4A16-AWQ+fp8", kv_cache_dtype="fp8_e4m3", kv_tokens=1048576, kv_bytes_per_token=9216,
                      context=32768, concurrent_sequences=32)]
    return KVSection(model=MODEL, cell="INT4-W4A16-AWQ", rows=rows, findings=["a finding"], capacity=cap)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_tables_fit_a_laptop_screen(ready, tmp_path):
    """At 1366 px no table scrolls sideways and no cell is cut: the leaderboards with a not-runnable row whose
    reason is a whole vLLM exception, and a KV section with every method."""
    root = tmp_path / "results"
    shutil.copytree(ready, root)
    exception = ("ValueError: The quantization method compressed-tensors is not supported for the current "
                 "platform.\nTraceback (most recent call last):\n" + "  File \"/x/vllm/engine.py\", line 1\n" * 20)
    put(root, MODEL, "INT8-W8A16", "perf", status="not_runnable", reason=exception)
    rep = build_report(root, min_recovery_by_task={"austen_ppl": 0.97})
    rep.kv = [_widest_kv_section()]
    write_report(rep, tmp_path, formats="html")
    html = (tmp_path / "report.html").read_text()
    probe = ("<script>const b = document.body.dataset;"
             "b.overflow = [...document.querySelectorAll('.scroll')].map(d => d.scrollWidth - d.clientWidth).join(',');"
             "b.cut = [...document.querySelectorAll('td')].filter(t => t.scrollWidth > t.clientWidth)"
             ".map(t => t.textContent).join('|');</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1366,768", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    overflow = dom.split('data-overflow="', 1)[1].split('"', 1)[0]
    widths = [int(x) for x in overflow.split(",")]
    assert len(widths) == 5 and widths == [0] * 5, widths  # quality, speed, serving regimes, KV methods, KV capacity
    assert dom.split('data-cut="', 1)[1].split('"', 1)[0] == ""  # e.g. "kivi-int4" cut to "kivi-in"
    note = next(ln for ln in html.splitlines() if "INT8-W8A16 perf:" in ln)
    assert "not supported for the current platform" in note and "Traceback" not in note and "engine.py" not in note


def test_cli_per_task_constraint(cli, ready, tmp_path):
    p = cli("report", str(ready), "-o", str(tmp_path / "r"), "--min-recovery", "austen_ppl=0.97", "--format", "json",
            env=CLI_ENV)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert "constraints (command line): recovery ≥ 99% on every quality measure (austen_ppl ≥ 97%)" in text
    assert "excluded:" in text and "INT4-W4A16-RTN: austen_ppl" in text and "inconclusive (more data needed):" in text
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["constraints"]["min_recovery_by_task"] == {"austen_ppl": 0.97}
    p = cli("report", str(ready), "--min-recovery", "austen_ppx=0.97", env=CLI_ENV)
    assert p.returncode != 0 and p.stderr.strip().startswith("error:") and "Available:" in p.stderr
