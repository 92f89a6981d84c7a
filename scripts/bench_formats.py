"""Benchmark: the 2026 float formats on the embedded model (FP8-BLOCK, MXFP8, NVFP4A16, NVFP4, MXFP4A16, MXFP4,
W4AFP8); writes one JSON record.

    OMP_NUM_THREADS=1 python scripts/bench_formats.py [--results-dir results/formats-smollm2] [--no-run] [--no-probe]

Runs the bundled ``formats-smollm2`` experiment through the suite (a rerun skips finished steps), writes its
report (``RESULTS_DIR/report``) and records per scheme: the proof inspect gives (status, storage, bits per weight
with the scales), word perplexity with its 95% interval and its paired recovery interval against BF16 on the same
backend, the verdict, how the activations were treated (``EvalResult.activations``), the size and the compression
time; and what vLLM itself says when asked to load each checkpoint here (bypassing ``ptq_deploy.hardware.support``
and the probe): where it refuses, speed is not measured here, and the record says why. Last, per document
(``--equivalence NVFP4``): transformers on the checkpoint against vLLM on its dense copy with and without the
activations quantized, and the two backends on BF16, all float32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ptq_deploy (the record's revision)

from bench_bitwidth import _probe, _row, run_and_report, step_times  # noqa: E402  (the bit-width record's figures)

from ptq_deploy.inspection import InspectConfig, inspect_checkpoint  # noqa: E402
from ptq_deploy.provenance import collect  # noqa: E402
from ptq_deploy.report.cells import load_cells  # noqa: E402
from ptq_deploy.suite import layout  # noqa: E402

EXPERIMENT = "formats-smollm2"


def _proof(ckpt: Path) -> dict:
    rep = inspect_checkpoint(InspectConfig(checkpoint=ckpt))
    targeted = [lin for lin in rep.linears if lin.status == "quantized"]
    return {"ok": rep.ok, "kind": rep.quantization.kind, "name": rep.quantization.name,
            "storage": sorted({lin.storage for lin in targeted}), "layers_quantized": len(targeted),
            "linear_bits_per_weight": rep.linear_bits_per_weight, "errors": [f.message for f in rep.errors]}


def _equivalence(root: Path, model: str, cell: str, baseline: str, limit: int) -> dict:
    """Per document, float32: transformers on ``cell``'s checkpoint (compressed-tensors quantizes the activations),
    vLLM on its dense copy with the activations quantized by the copy's spec, the same copy without it (16-bit
    activations); and the two backends on the baseline, for the gap that is theirs alone."""
    import shutil
    import tempfile

    from ptq_deploy.checkpoint.dequantize import ACTIVATIONS_FILE
    from ptq_deploy.engine import EngineConfig
    from ptq_deploy.eval import EvalConfig, run_eval

    # documents within one window on both backends (lm-eval cuts rolling windows one token apart on the two)
    opts = dict(tasks=["austen_ppl"], limit=limit, engine=EngineConfig(max_model_len=2048, dtype="float32"),
                write=False)

    def per_doc(ckpt: Path, backend: str) -> list[float]:
        res = run_eval(EvalConfig(checkpoint=str(ckpt), backend=backend, **opts))
        return [ll for ll, _ in res.tasks["austen_ppl"].per_sample.values["word_perplexity"]]

    def rel(a: list[float], b: list[float]) -> dict:
        d = [abs(x - y) / abs(x) for x, y in zip(a, b)]
        return {"worst": max(d), "mean": sum(d) / len(d)}

    dense = layout.dequantized_dir(root, model, cell)
    with tempfile.TemporaryDirectory(prefix="ptq-plain-") as tmp:
        plain = Path(tmp) / "plain"
        shutil.copytree(dense, plain)
        (plain / ACTIVATIONS_FILE).unlink()
        docs = {"hf_checkpoint": per_doc(layout.checkpoint_dir(root, model, cell), "hf"),
                "vllm_emulated": per_doc(dense, "vllm"), "vllm_16bit_activations": per_doc(plain, "vllm"),
                "hf_baseline": per_doc(layout.checkpoint_dir(root, model, baseline), "hf"),
                "vllm_baseline": per_doc(layout.checkpoint_dir(root, model, baseline), "vllm")}
    return {"scheme": cell, "documents": limit, "dtype": "float32", "max_model_len": 2048,
            "loglikelihood_per_document": docs,
            "rel_diff": {"emulated_vs_checkpoint": rel(docs["hf_checkpoint"], docs["vllm_emulated"]),
                         "16bit_activations_vs_checkpoint": rel(docs["hf_checkpoint"], docs["vllm_16bit_activations"]),
                         "backends_on_baseline": rel(docs["hf_baseline"], docs["vllm_baseline"])}}


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
    ap.add_argument("--equivalence", default="NVFP4", help="the scheme whose emulation is checked against "
                    "transformers on its checkpoint, per document ('' skips it)")
    ap.add_argument("--equivalence-docs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    exp, _, lb = run_and_report(EXPERIMENT, a.results_dir, a.no_run)
    evals = {c.cell: c.results.get("eval") for c in load_cells(a.results_dir)}
    rows = [{**_row(r), "verdict_note": r.quality_note, "activations": getattr(evals.get(r.cell), "activations", None)}
            for r in [*lb.rows, *lb.quality_only]]
    ckpts = {c: layout.checkpoint_dir(a.results_dir, lb.model, c) for c in exp.schemes if c != exp.baseline}
    proofs = {c: _proof(p) for c, p in ckpts.items()}
    in_vllm = {} if a.no_probe else {c: _probe(p) for c, p in ckpts.items()}
    equivalence = (_equivalence(a.results_dir, lb.model, a.equivalence, exp.baseline, a.equivalence_docs)
                   if a.equivalence else None)
    steps = step_times(a.results_dir)
    record = {"kind": "formats-benchmark", "schema_version": 1, "experiment": exp.model_dump(mode="json"),
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "note": ("one run per scheme on a shared 2-core CPU; vLLM runs none of these formats here, so each is "
                       "scored in vLLM on a dense copy of its dequantized weights with its activations quantized as "
                       "the scheme says (compressed-tensors' forward_quantize before each Linear, engine.emulation), "
                       "against BF16 scored with the same backend and settings; the recovery interval is the paired "
                       "bootstrap over the same documents"),
              "rows": rows, "proofs": proofs, "vllm_here": in_vllm, "emulation_vs_checkpoint": equivalence,
              "steps": steps,
              "recommendation": lb.recommendation.model_dump(), "provenance": collect(compress_env=True).model_dump(mode="json")}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"formats_{EXPERIMENT}_{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(_table(rows))
    for c, p in proofs.items():
        print(f"inspect {c}: {'proven' if p['ok'] else 'FAILED'}, {p['storage']}, {p['linear_bits_per_weight']} bits/weight")
    for c, said in in_vllm.items():
        print(f"vLLM here, {c}: {said}")
    if equivalence:
        print(f"{a.equivalence} per document vs transformers on the checkpoint (worst relative difference): "
              + ", ".join(f"{k} {v['worst']:.2e}" for k, v in equivalence["rel_diff"].items()))
    print(f"wrote {path} and {a.results_dir / 'report'}")


if __name__ == "__main__":
    main()
