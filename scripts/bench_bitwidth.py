"""Benchmark: the bit-width curve on the embedded model (RTN, GPTQ, AWQ, POT, APOT); writes one JSON record.

    OMP_NUM_THREADS=1 python scripts/bench_bitwidth.py [--results-dir results/bitwidth-smollm2] [--no-run] [--no-probe]

Runs the bundled ``bitwidth-smollm2`` experiment through the suite (a rerun skips finished steps), writes its
report (``RESULTS_DIR/report``, the bit-width curve among the plots) and records per scheme: method, bits,
effective bits per weight, word perplexity with its 95% interval (± 1.96 bootstrap standard errors), cloze
accuracy ± its standard error, effective and stored size, compression time and the eval backend. Then it asks
vLLM itself (bypassing ``ptq_deploy.hardware.support``) to load each W3A16 / W2A16 checkpoint and records what it says,
and inspects a tampered copy of each POT / APOT checkpoint (one weight moved off its grid), which must fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

from ptq_deploy.compress import schemes
from ptq_deploy.engine import EngineConfig
from ptq_deploy.engine import args as engine_args
from ptq_deploy.hardware import detect
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint
from ptq_deploy.provenance import collect
from ptq_deploy.report import build_report, write_report
from ptq_deploy.report.cells import load_cells
from ptq_deploy.stats import Z95
from ptq_deploy.suite import experiment, layout
from ptq_deploy.suite.execute import run
from ptq_deploy.suite.plan import RunOptions

EXPERIMENT = "bitwidth-smollm2"

def _row(r) -> dict:
    cloze, ppl = r.tasks.get("austen_cloze"), r.tasks.get("austen_ppl")
    ci = [round(r.ppl - Z95 * r.ppl_stderr, 2), round(r.ppl + Z95 * r.ppl_stderr, 2)] if r.ppl_stderr else None
    return {"scheme": r.cell, "method": r.method or ("BF16" if r.baseline else None), "quality_only": r.quality_only,
            "bits": schemes.get(r.scheme).weight_bits, "bits_per_weight": r.bits_per_weight,
            "word_ppl": r.ppl, "word_ppl_stderr": r.ppl_stderr, "word_ppl_ci95": ci,
            "ppl_recovery_pct": ppl.recovery_pct if ppl else None,
            "ppl_recovery_ci95": [ppl.recovery_low_pct, ppl.recovery_high_pct] if ppl else None,
            "cloze_acc": cloze.value if cloze else None, "cloze_stderr": cloze.stderr if cloze else None,
            "cloze_n": cloze.n if cloze else None, "quality": r.quality, "effective_gb": r.effective_gb,
            "stored_gb": r.weights_gb, "compress_s": r.compress_s, "eval_backend": r.eval_backend}


def _probe(ckpt: Path) -> str:
    """What vLLM says when asked to load ``ckpt`` here (its whole message, one line)."""
    resolved = engine_args.resolve(ckpt, EngineConfig(max_model_len=256), detect())
    engine_args.apply_environment(resolved)
    from vllm import LLM  # heavy; only for the probe

    try:
        llm = LLM(**engine_args.llm_kwargs(resolved))
    except Exception as e:  # the answer we want to record
        return f"refused: {type(e).__name__}: {' '.join(str(e).split())}"
    del llm
    return "loaded"


def _tamper(ckpt: Path) -> dict:
    """Inspect ``ckpt`` and a copy with one weight of one group moved between two levels: the copy must fail."""
    from safetensors.torch import load_file, save_file  # heavy (torch)

    t0 = time.perf_counter()
    ok = inspect_checkpoint(InspectConfig(checkpoint=ckpt)).ok
    inspect_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="ptq-tamper-") as tmp:
        copy = Path(tmp) / ckpt.name
        shutil.copytree(ckpt, copy)
        weights = load_file(str(copy / "model.safetensors"))
        w = weights["model.layers.7.mlp.down_proj.weight"]
        w[11, 5] = w[11, :64].abs().max() * 0.7  # between levels of every grid here (POT: 0.5, 1; APOT: 2/3, 1)
        save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
        rep = inspect_checkpoint(InspectConfig(checkpoint=copy))
    return {"inspect_ok": ok, "inspect_s": round(inspect_s, 1), "tampered_ok": rep.ok,
            "tampered_errors": [f.message for f in rep.errors]}


def run_and_report(name: str, results_dir: Path, no_run: bool):
    """Run the bundled experiment ``name`` into ``results_dir`` (unless ``no_run``; a rerun skips finished
    steps), write its report there and return (experiment, report, the first leaderboard)."""
    exp = experiment.load(name)
    if not no_run:
        run(exp, RunOptions(results_dir=results_dir))
    rep = build_report(results_dir)
    write_report(rep, results_dir / "report")
    return exp, rep, rep.leaderboards[0]


def step_times(results_dir: Path) -> dict:
    return {f"{s.cell}/{s.step}": {"status": s.status, "s": round(s.duration_s, 1), "reason": s.reason}
            for s in layout.records(results_dir)}


def _table(rows: list[dict]) -> str:
    lines = ["| scheme | method | bits | bits/weight | word ppl (95% CI) | cloze acc ± se | effective GB | compress s |",
             "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        ci = f" ({x['word_ppl_ci95'][0]}–{x['word_ppl_ci95'][1]})" if x["word_ppl_ci95"] else ""
        lines.append(f"| {x['scheme']} | {x['method']} | {x['bits']} | {x['bits_per_weight']} | {x['word_ppl']}{ci} | "
                     f"{x['cloze_acc']} ± {x['cloze_stderr']} | {x['effective_gb']} | {x['compress_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results") / EXPERIMENT)
    ap.add_argument("--no-run", action="store_true", help="report on what the results dir holds")
    ap.add_argument("--no-probe", action="store_true", help="skip asking vLLM to load the W3A16 / W2A16 checkpoints")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    exp, rep, lb = run_and_report(EXPERIMENT, a.results_dir, a.no_run)
    rows = sorted((_row(r) for r in [*lb.rows, *lb.quality_only]), key=lambda x: (x["method"] or "", -x["bits"]))
    base = next(c for c in load_cells(a.results_dir) if c.cell == exp.baseline)
    by_backend = {r.backend: r.tasks["austen_ppl"].metrics["word_perplexity"].value
                  for r in (base.results.get("eval"), base.results.get("eval-hf")) if r is not None}
    low_bit = {} if a.no_probe else {
        c: _probe(layout.checkpoint_dir(a.results_dir, lb.model, c)) for c in exp.schemes
        if schemes.get(c).weight_bits in (2, 3) and not schemes.get(c).quality_only}
    tamper = {c: _tamper(layout.checkpoint_dir(a.results_dir, lb.model, c)) for c in exp.schemes
              if schemes.get(c).quality_only}
    steps = step_times(a.results_dir)
    record = {"kind": "bitwidth-benchmark", "schema_version": 1, "experiment": exp.model_dump(mode="json"),
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "note": ("one run per scheme on a shared 2-core CPU (OMP_NUM_THREADS=1); compress_s is the compress "
                       "step's wall time (process start, load, calibration or grid search, save); RTN/GPTQ/AWQ are "
                       "scored with lm-eval's HF backend (vLLM cannot run them here), BF16, POT and APOT with vLLM"),
              "baseline_word_ppl_by_backend": by_backend, "rows": rows, "vllm_low_bit": low_bit, "level_check": tamper, "steps": steps,
              "recommendation": lb.recommendation.model_dump(), "provenance": collect(compress_env=True).model_dump(mode="json")}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"bitwidth_{EXPERIMENT}_{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(_table(rows))
    for c, said in low_bit.items():
        print(f"vLLM, {c}: {said}")
    for c, t in tamper.items():
        print(f"level check, {c}: passes {t['inspect_ok']} ({t['inspect_s']} s), tampered copy passes "
              f"{t['tampered_ok']}: {t['tampered_errors'][:1]}")
    print(f"wrote {path} and {a.results_dir / 'report'}")


if __name__ == "__main__":
    main()
