"""Benchmark: the 2026 float formats on the embedded model (FP8-BLOCK, MXFP8, NVFP4A16, NVFP4, MXFP4A16, MXFP4,
W4AFP8); writes one JSON record.

    OMP_NUM_THREADS=1 python scripts/bench_formats.py [--results-dir results/formats-smollm2] [--no-run] [--no-probe]

Runs the bundled ``formats-smollm2`` experiment through the suite (a rerun skips finished steps), writes its
report (``RESULTS_DIR/report``) and records per scheme: the proof inspect gives (status, storage, bits per weight
with the scales), word perplexity with its 95% interval and its paired recovery interval against BF16 on the same
backend, the verdict, how the activations were treated (``EvalResult.activations``), the size and the compression
time; and what vLLM itself says when asked to load each checkpoint here (bypassing ``ptq_deploy.hardware.support``
and the probe): where it refuses, speed is not measured here, and the record says why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from bench_bitwidth import _probe, _row  # the same figures per scheme as the bit-width record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ptq_deploy (the record's revision)

from ptq_deploy.inspection import InspectConfig, inspect_checkpoint  # noqa: E402
from ptq_deploy.provenance import collect  # noqa: E402
from ptq_deploy.report import build_report, write_report  # noqa: E402
from ptq_deploy.report.cells import load_cells  # noqa: E402
from ptq_deploy.suite import experiment, layout  # noqa: E402
from ptq_deploy.suite.execute import run  # noqa: E402
from ptq_deploy.suite.plan import RunOptions  # noqa: E402

EXPERIMENT = "formats-smollm2"


def _proof(ckpt: Path) -> dict:
    rep = inspect_checkpoint(InspectConfig(checkpoint=ckpt))
    targeted = [lin for lin in rep.linears if lin.status == "quantized"]
    return {"ok": rep.ok, "kind": rep.quantization.kind, "name": rep.quantization.name,
            "storage": sorted({lin.storage for lin in targeted}), "layers_quantized": len(targeted),
            "linear_bits_per_weight": rep.linear_bits_per_weight, "errors": [f.message for f in rep.errors]}


def _table(rows: list[dict]) -> str:
    lines = ["| scheme | bits/weight | word ppl (95% CI) | recovery % (paired 95% CI) | verdict | backend | "
             "activations | effective GB |", "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        ci = f" ({x['word_ppl_ci95'][0]}–{x['word_ppl_ci95'][1]})" if x["word_ppl_ci95"] else ""
        rec = x["ppl_recovery_ci95"] or [None, None]
        lines.append(f"| {x['scheme']} | {x['bits_per_weight']} | {x['word_ppl']}{ci} | {x['ppl_recovery_pct']} "
                     f"({rec[0]}–{rec[1]}) | {x['quality']} | {x['eval_backend']} | {x['activations']} | "
                     f"{x['effective_gb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results") / EXPERIMENT)
    ap.add_argument("--no-run", action="store_true", help="report on what the results dir holds")
    ap.add_argument("--no-probe", action="store_true", help="skip asking vLLM to load each checkpoint")
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    exp = experiment.load(EXPERIMENT)
    if not a.no_run:
        run(exp, RunOptions(results_dir=a.results_dir))
    rep = build_report(a.results_dir)
    write_report(rep, a.results_dir / "report")
    lb = rep.leaderboards[0]
    evals = {c.cell: c.results.get("eval") for c in load_cells(a.results_dir)}
    rows = [{**_row(r), "verdict_note": r.quality_note, "activations": getattr(evals.get(r.cell), "activations", None)}
            for r in [*lb.rows, *lb.quality_only]]
    ckpts = {c: layout.checkpoint_dir(a.results_dir, lb.model, c) for c in exp.schemes if c != exp.baseline}
    proofs = {c: _proof(p) for c, p in ckpts.items()}
    in_vllm = {} if a.no_probe else {c: _probe(p) for c, p in ckpts.items()}
    steps = {f"{s.cell}/{s.step}": {"status": s.status, "s": round(s.duration_s, 1), "reason": s.reason}
             for s in layout.records(a.results_dir)}
    record = {"kind": "formats-benchmark", "schema_version": 1, "experiment": exp.model_dump(mode="json"),
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "note": ("one run per scheme on a shared 2-core CPU; vLLM runs none of these formats here, so each is "
                       "scored in vLLM on a dense copy of its dequantized weights with its activations quantized as "
                       "the scheme says (compressed-tensors' forward_quantize before each Linear, engine.emulation), "
                       "against BF16 scored with the same backend and settings; the recovery interval is the paired "
                       "bootstrap over the same documents"),
              "rows": rows, "proofs": proofs, "vllm_here": in_vllm, "steps": steps,
              "recommendation": lb.recommendation.model_dump(), "provenance": collect(compress_env=True).model_dump(mode="json")}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"formats_{EXPERIMENT}_{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(_table(rows))
    for c, p in proofs.items():
        print(f"inspect {c}: {'proven' if p['ok'] else 'FAILED'}, {p['storage']}, {p['linear_bits_per_weight']} bits/weight")
    for c, said in in_vllm.items():
        print(f"vLLM here, {c}: {said}")
    print(f"wrote {path} and {a.results_dir / 'report'}")


if __name__ == "__main__":
    main()
