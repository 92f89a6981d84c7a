"""Read a suite results dir (``ptq_deploy.suite.layout``) into one typed ``Row`` per model x cell.

Only the files under RESULTS_DIR are read: ``steps/`` (which steps finished, failed or cannot run
here, and why) and ``results/`` (the step results). Every number of a row is rounded once, here, to
4 significant digits (uncertainties to 2) and kept in the unit it is shown in (ms, GB, tok/s, %), so that every rendering
(Markdown, JSON, CSV, HTML, plots) prints the same value.

Definitions (vs the model's baseline cell, ``experiment.yaml``'s ``baseline``, default BF16):

- accuracy: each task's primary metric (``TaskResult.primary_metric``); ``acc_avg`` is the mean over
  tasks whose metric is higher-is-better; ± is one standard error (lm-eval's, or bootstrap).
- recovery: ``ptq_deploy.eval.recovery.compare_task`` per accuracy task against the baseline eval
  scored *with the same backend* (vLLM or HF), averaged over those tasks (over all tasks when none is
  an accuracy); its ± is the delta's standard error (paired bootstrap where per-sample values
  exist) propagated to the ratio. Verdict: "regressed" if any task's 95% interval of the delta is
  entirely on the worse side, else "improved" if any is on the better side, else "not distinguishable".
- perplexity: the first task whose primary metric is a perplexity, with its delta vs the baseline.
- throughput: offline output tokens/s (median over iterations, ± stdev); speedup = ratio of medians.
- TTFT / TPOT: the serving sweep's lowest concurrency when it ran, else offline batch-1 prefill and
  decode time per token.
- weights: tensor bytes of the checkpoint (inspect, else perf, else compress); memory: measured peak
  (GPU when there is one, else process RSS) of the perf engine, which includes vLLM's KV-cache space.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from ptq_deploy.errors import UsageError
from ptq_deploy.results.kinds import read_result
from ptq_deploy.suite.layout import StepRecord, records, result_file

Verdict = Literal["baseline", "not distinguishable", "regressed", "improved"]
DEFAULT_BASELINE = "BF16"
GB = 1e9


def sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` significant digits (None / NaN / inf -> None)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def err(x: float | None) -> float | None:
    """An uncertainty, rounded to 2 significant digits."""
    return sig(x, 2)


class TaskScore(BaseModel):
    metric: str
    value: float | None
    stderr: float | None = None
    higher_is_better: bool = True
    recovery_pct: float | None = None
    delta: float | None = None
    delta_stderr: float | None = None
    verdict: Verdict | None = None
    method: str | None = None  # how the delta's uncertainty was obtained


class Row(BaseModel):
    model: str
    cell: str
    scheme: str
    kv_cache: str
    baseline: bool = False
    rank: int | None = None  # set by the leaderboard
    pareto: bool = False  # on the recovery x throughput Pareto front (set by the leaderboard)
    status: dict[str, str] = {}  # step -> ok | failed | not_runnable
    reasons: dict[str, str] = {}  # step -> why it failed / cannot run here
    status_text: str = "ok"
    notes: list[str] = []
    eval_backend: str | None = None
    tasks: dict[str, TaskScore] = {}
    acc_avg: float | None = None
    acc_avg_stderr: float | None = None
    recovery_pct: float | None = None
    recovery_pct_stderr: float | None = None
    verdict: Verdict | None = None
    ppl_task: str | None = None
    ppl: float | None = None
    ppl_stderr: float | None = None
    ppl_delta: float | None = None
    ppl_delta_stderr: float | None = None
    ppl_verdict: Verdict | None = None
    throughput_tok_s: float | None = None
    throughput_tok_s_stdev: float | None = None
    throughput_n: int | None = None
    speedup: float | None = None
    speedup_stderr: float | None = None
    latency_source: str | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p99_ms: float | None = None
    load_s: float | None = None
    weights_gb: float | None = None
    memory_gb: float | None = None
    memory_source: str | None = None
    compress_s: float | None = None
    roofline_pct: float | None = None


class Cell(BaseModel):
    """Everything the results dir holds for one model x cell (typed results, None where absent)."""

    model: str
    cell: str
    scheme: str
    kv_cache: str
    steps: dict[str, StepRecord] = {}
    results: dict[str, Any] = {}  # step -> CompressResult | InspectReport | PerfResult | EvalResult
    problems: list[str] = []


RESULT_KINDS = {"compress": "compress", "inspect": "inspect", "perf": "perf", "eval": "eval", "eval-hf": "eval"}


def baseline_scheme(root: Path) -> str:
    """The experiment's baseline scheme (``experiment.yaml``), BF16 when it does not say."""
    f = root / "experiment.yaml"
    try:
        data = yaml.safe_load(f.read_text()) if f.is_file() else None
    except (OSError, yaml.YAMLError):
        data = None
    return str(data.get("baseline") or DEFAULT_BASELINE) if isinstance(data, dict) else DEFAULT_BASELINE


def load_cells(root: Path) -> list[Cell]:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"results dir not found: {root}")
    try:
        recs = records(root)
    except (ValidationError, ValueError) as e:
        raise UsageError(f"{root}/steps holds a file that is not a step record: {str(e).splitlines()[0]}") from None
    if not recs:
        raise UsageError(f"no suite results in {root} (no steps/<model>/<cell>/<step>.json); "
                         "run `ptq-deploy run EXPERIMENT.yaml` first")
    cells: dict[tuple[str, str], Cell] = {}
    for r in recs:
        c = cells.setdefault((r.model, r.cell), Cell(model=r.model, cell=r.cell, scheme=r.scheme, kv_cache=r.kv_cache))
        c.steps[r.step] = r
        if r.status != "ok" or r.step not in RESULT_KINDS:
            continue
        path = root / r.result if r.result else result_file(root, r.model, r.cell, r.step)
        if not r.result and not path.is_file():
            continue  # a finished step that left no result object
        try:
            res = read_result(path)
        except UsageError as e:
            c.problems.append(f"{r.step}: {e}")
            continue
        if res.kind != RESULT_KINDS[r.step]:
            c.problems.append(f"{r.step}: {path.relative_to(root)} holds a {res.kind} result")
            continue
        c.results[r.step] = res
    return list(cells.values())


# ---------------------------------------------------------------- per-cell figures
def _is_accuracy(task) -> bool:
    m = task.primary_metric()
    hib = task.metrics[m].higher_is_better
    return hib if hib is not None else not m.endswith(("perplexity", "bits_per_byte"))


def _evals(c: Cell) -> dict[str, Any]:
    """backend -> EvalResult of this cell (``eval`` first, then ``eval-hf``)."""
    out: dict[str, Any] = {}
    for step in ("eval", "eval-hf"):
        r = c.results.get(step)
        if r is not None:
            out.setdefault(r.backend, r)
    return out


def _status(c: Cell) -> tuple[dict[str, str], dict[str, str], str]:
    status = {s: r.status for s, r in c.steps.items()}
    reasons = {s: r.reason for s, r in c.steps.items() if r.reason}
    bad = [f"{s}: not runnable here" if st == "not_runnable" else f"{s}: failed"
           for s, st in status.items() if st != "ok"]
    return status, reasons, "; ".join(bad) or "ok"


def _rec_err(r) -> float | None:
    """Standard error of the recovery ratio from the delta's (delta method, in %)."""
    if r.stderr is None or r.recovery is None:
        return None
    if r.higher_is_better:
        return abs(r.stderr / r.baseline) * 100 if r.baseline else None
    return abs(r.baseline * r.stderr / r.quantized ** 2) * 100 if r.quantized else None


def _combine_verdicts(vs: list[str]) -> str | None:
    if not vs:
        return None
    if "regressed" in vs:
        return "regressed"
    return "improved" if "improved" in vs else "not distinguishable"


def _accuracy(row: Row, c: Cell, base: Cell | None, iters: int, seed: int) -> None:
    from ptq_deploy.eval import recovery

    evals = _evals(c)
    if not evals:
        return
    backend = "vllm" if "vllm" in evals else next(iter(evals))
    ev = evals[backend]
    row.eval_backend = backend
    acc_vals, acc_ses = [], []
    for name, t in ev.tasks.items():
        m = t.primary_metric()
        mv = t.metrics[m]
        row.tasks[name] = TaskScore(metric=m, value=sig(mv.value), stderr=err(mv.stderr), higher_is_better=_is_accuracy(t))
        if _is_accuracy(t):
            acc_vals.append(mv.value)
            acc_ses.append(mv.stderr)
        elif row.ppl_task is None and "perplexity" in m:
            row.ppl_task, row.ppl, row.ppl_stderr = name, sig(mv.value), err(mv.stderr)
    if acc_vals:
        row.acc_avg = sig(sum(acc_vals) / len(acc_vals))
        if all(s is not None for s in acc_ses):
            row.acc_avg_stderr = err(math.sqrt(sum(s * s for s in acc_ses)) / len(acc_ses))
    if row.baseline:
        row.recovery_pct, row.verdict = 100.0, "baseline"
        return
    if base is None:
        row.notes.append("no baseline cell: recovery not computed")
        return
    bev = _evals(base).get(backend)
    if bev is None:
        row.notes.append(f"the baseline {base.cell} has no {backend}-backend eval: recovery not computed")
        return
    diff = bev.settings.differences(ev.settings)
    if c.kv_cache != "none":
        diff.pop("kv_cache_dtype", None)  # the KV-cache dtype is what this cell changes
    if diff:
        what = ", ".join(f"{k}: baseline {a!r} vs {b!r}" for k, (a, b) in diff.items())
        row.notes.append(f"eval settings differ from the baseline ({what}): recovery not computed")
        return
    recs = {}
    for name, t in ev.tasks.items():
        if name in bev.tasks and t.primary_metric() in bev.tasks[name].metrics:
            try:
                recs[name] = recovery.compare_task(bev.tasks[name], t, t.primary_metric(), iters=iters, seed=seed)
            except UsageError as e:
                row.notes.append(f"{name}: {e}")
    for name, r in recs.items():
        ts = row.tasks[name]
        ts.recovery_pct = sig(r.recovery * 100) if r.recovery is not None else None
        ts.delta, ts.delta_stderr, ts.verdict, ts.method = sig(r.delta), err(r.stderr), r.verdict, r.method
    used = [n for n in recs if row.tasks[n].higher_is_better] or list(recs)
    used = [n for n in used if recs[n].recovery is not None]
    if used:
        row.recovery_pct = sig(sum(recs[n].recovery for n in used) / len(used) * 100)
        errs = [_rec_err(recs[n]) for n in used]
        if all(e is not None for e in errs):
            row.recovery_pct_stderr = err(math.sqrt(sum(e * e for e in errs)) / len(errs))
        row.verdict = _combine_verdicts([recs[n].verdict for n in used])
    if row.ppl_task in recs:
        r = recs[row.ppl_task]
        row.ppl_delta, row.ppl_delta_stderr, row.ppl_verdict = sig(r.delta), err(r.stderr), r.verdict


def _throughput(perf) -> tuple[float, float, int] | None:
    if perf is None or perf.throughput is None or perf.throughput.output_tokens_per_s.n == 0:
        return None
    s = perf.throughput.output_tokens_per_s
    return s.median, s.stdev, s.n


def _perf(row: Row, c: Cell, base: Cell | None) -> None:
    perf = c.results.get("perf")
    tp = _throughput(perf)
    if tp:
        row.throughput_tok_s, row.throughput_tok_s_stdev, row.throughput_n = sig(tp[0]), err(tp[1]), tp[2]
        btp = _throughput(base.results.get("perf")) if base is not None else None
        if row.baseline:
            row.speedup = 1.0
        elif btp and btp[0] > 0:
            row.speedup = sig(tp[0] / btp[0])
            if tp[2] > 1 and btp[2] > 1:
                rel = math.sqrt((tp[1] / tp[0]) ** 2 / tp[2] + (btp[1] / btp[0]) ** 2 / btp[2])
                row.speedup_stderr = err(tp[0] / btp[0] * rel)
    if perf is None:
        return
    levels = sorted(perf.serving.levels, key=lambda lv: lv.concurrency) if perf.serving else []
    levels = [lv for lv in levels if lv.ttft_ms.n > 0]
    if levels:
        lv = levels[0]
        row.latency_source = f"serving, concurrency {lv.concurrency}"
        row.ttft_p50_ms, row.ttft_p99_ms = sig(lv.ttft_ms.median), sig(lv.ttft_ms.p99)
        if lv.tpot_ms.n:
            row.tpot_p50_ms, row.tpot_p99_ms = sig(lv.tpot_ms.median), sig(lv.tpot_ms.p99)
    elif perf.latency is not None:
        lat = perf.latency
        row.latency_source = "offline, batch 1"
        if lat.batch1_prefill.n:
            row.ttft_p50_ms, row.ttft_p99_ms = sig(lat.batch1_prefill.median * 1e3), sig(lat.batch1_prefill.p99 * 1e3)
        if lat.batch1_decode_per_token.n:
            d = lat.batch1_decode_per_token
            row.tpot_p50_ms, row.tpot_p99_ms = sig(d.median * 1e3), sig(d.p99 * 1e3)
    if perf.load and perf.load.engine_init_s and perf.load.engine_init_s.n:
        row.load_s = sig(perf.load.engine_init_s.median)
    elif perf.engine is not None:  # the engine was loaded by another step and handed to perf
        row.load_s = sig(perf.engine.load_time_s)
    elif perf.serving:
        row.load_s = sig(perf.serving.server.startup_s.median)
    if perf.memory:
        gpu = perf.memory.peak_gpu_bytes
        row.memory_gb = sig((gpu if gpu is not None else perf.memory.peak_rss_bytes) / GB)
        row.memory_source = "peak GPU memory" if gpu is not None else "peak process RSS"
    if perf.roofline and perf.roofline.mbu.n:
        row.roofline_pct = sig(perf.roofline.mbu.median * 100)


def _sizes(row: Row, c: Cell) -> None:
    insp, perf, comp = c.results.get("inspect"), c.results.get("perf"), c.results.get("compress")
    if row.load_s is None and insp is not None and insp.runtime and insp.runtime.load_time_s:
        row.load_s = sig(insp.runtime.load_time_s)
    weights = (insp.tensor_bytes if insp is not None else None) \
        or (perf.memory.weight_bytes_checkpoint if perf is not None and perf.memory else None) \
        or (comp.checkpoint_bytes if comp is not None else None)
    row.weights_gb = sig(weights / GB) if weights else None
    if comp is not None:
        row.compress_s = sig(comp.wall_time_s)
    elif "compress" in c.steps and c.steps["compress"].status == "ok":
        row.compress_s = sig(c.steps["compress"].duration_s)


def collect(root: Path, baseline: str | None = None, iters: int = 1000, seed: int = 0) -> list[Row]:
    """One Row per model x cell found in ``root`` (in the order of the step records)."""
    root = Path(root)
    cells = load_cells(root)
    base_cell = baseline or baseline_scheme(root)
    bases = {c.model: c for c in cells if c.cell == base_cell}
    rows = []
    for c in cells:
        status, reasons, text = _status(c)
        row = Row(model=c.model, cell=c.cell, scheme=c.scheme, kv_cache=c.kv_cache, baseline=c.cell == base_cell,
                  status=status, reasons=reasons, status_text=text, notes=list(c.problems))
        base = bases.get(c.model)
        _accuracy(row, c, base, iters, seed)
        _perf(row, c, base)
        _sizes(row, c)
        rows.append(row)
    return rows


def flat(row: Row) -> dict[str, Any]:
    """A row as one flat dict (``tasks.<task>.<field>``, ``status.<step>``): CSV and DataFrame columns."""
    d = row.model_dump()
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == "tasks":
            for t, ts in v.items():
                out.update({f"tasks.{t}.{f}": x for f, x in ts.items()})
        elif isinstance(v, dict):
            out.update({f"{k}.{f}": x for f, x in v.items()})
        elif isinstance(v, list):
            out[k] = json.dumps(v) if v else ""
        else:
            out[k] = v
    return out


def to_frame(rows: list[Row]):
    """The rows as a pandas DataFrame (one row per model x cell, flat columns)."""
    import pandas as pd

    return pd.DataFrame([flat(r) for r in rows])
