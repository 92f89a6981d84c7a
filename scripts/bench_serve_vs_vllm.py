"""Compare one point of perf's serving sweep with ``vllm bench serve`` at the same concurrency, against the
same running ``vllm serve``; write the ratio to perf_results/.

    python scripts/bench_serve_vs_vllm.py [--checkpoint DIR] [--rounds 5] [--pairs 8] [--concurrency 4]
        [--num-prompts 32 --input-len 128 --output-len 64]

One server (``engine.server.Server``, the settings ``engine.resolve`` picks) serves both clients, so the
only difference is the client that measures:
- ptq-deploy's side is perf's own ``serving.drive`` (vLLM's ``benchmark()`` coroutine in-process, after
  perf's warm-up of one short request per slot, prefix cache emptied before timing);
- vLLM's side is ``vllm bench serve`` (a fresh process: ``--backend openai --endpoint /v1/completions``,
  random dataset, same seed and lengths, ``--ignore-eos``, ``--max-concurrency``, no warm-up: the server is
  already warm), the prefix cache emptied just before it starts;
- the order alternates between rounds so that drift on the machine hits both.

The figure is the per-round ratio ptq-deploy / vLLM of output tokens/s, with its spread over rounds and a
95% t-interval of the mean; the target is a median within 0.98-1.02. TTFT / TPOT medians of both sides
are recorded beside it.

On a 2-core machine the client shares the cores with the server's two processes, so a fresh client process
and a client inside a process that already holds a tokenizer and threads do not load the server alike.
``--pairs N`` therefore also runs vLLM's client in this process (``vllm.benchmarks.serve.main`` with the
flags of ``vllm bench serve`` above), alternating with perf's, on the same server: each pair's ratio
compares the two clients under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy import engine
from ptq_deploy.engine import vllm_cli
from ptq_deploy.engine.server import Server, sigterm_as_interrupt
from ptq_deploy.hardware import detect
from ptq_deploy.perf import serving, workload
from ptq_deploy.provenance import Provenance, collect
from ptq_deploy.results import SCHEMA_VERSION, atomic_write_json
from ptq_deploy.stats import Summary
from ptq_deploy.timeutil import file_stamp


class Side(BaseModel):
    output_tokens_per_s: float
    requests_per_s: float
    median_ttft_ms: float
    median_tpot_ms: float
    completed: int


class Round(BaseModel):
    order: str
    ours: Side
    vllm: Side
    ratio: float  # ours / vllm, output tok/s


class InProcess(BaseModel):
    """vLLM's client in this process, alternating with perf's on the same server (``--pairs``)."""

    pairs: list[Round]
    ratio: Summary  # per pair, output tok/s
    ratio_ci95: tuple[float, float]
    ttft_ratio: Summary
    tpot_ratio: Summary


class BenchResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str = "bench-serve-vs-vllm"
    checkpoint: str
    settings: engine.ResolvedEngine
    concurrency: int
    num_prompts: int
    input_len: int
    output_len: int
    seed: int
    rounds: list[Round]
    ratio: Summary  # per-round ratios, output tok/s
    ratio_ci95: tuple[float, float]
    ttft_ratio: Summary  # per-round median TTFT, ours / vllm
    tpot_ratio: Summary
    target: tuple[float, float] = (0.98, 1.02)
    meets_target: bool
    in_process: InProcess | None = None  # --pairs
    vllm_command: list[str]
    env: dict[str, str] = {}  # the thread and core settings both sides ran under
    provenance: Provenance


def vllm_side(srv: Server, a) -> tuple[Side, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [*vllm_cli.command(), "bench", "serve", *vllm_flags(srv, a, d)]
        srv.reset_prefix_cache()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"error: vllm bench serve failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        return _side(json.loads((Path(d) / "vllm.json").read_text())), cmd


def vllm_flags(srv: Server, a, result_dir: str) -> list[str]:
    return ["--backend", "openai", "--base-url", srv.base_url, "--endpoint", "/v1/completions", "--model", srv.cfg.model,
            "--dataset-name", "random", "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len),
            "--random-range-ratio", "0", "--num-prompts", str(a.num_prompts), "--max-concurrency", str(a.concurrency),
            "--request-rate", "inf", "--ignore-eos", "--seed", str(a.seed), "--num-warmups", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", result_dir,
            "--result-filename", "vllm.json"]


def _side(r: dict) -> Side:
    return Side(output_tokens_per_s=r["output_throughput"], requests_per_s=r["request_throughput"],
                median_ttft_ms=r["median_ttft_ms"], median_tpot_ms=r["median_tpot_ms"], completed=r["completed"])


def vllm_in_process(srv: Server, a) -> Side:
    """vLLM's own client, run here as ``vllm bench serve`` runs it (its parser, its defaults, its main)."""
    import contextlib
    import io

    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    with tempfile.TemporaryDirectory() as d:
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        args = parser.parse_args(vllm_flags(srv, a, d))
        srv.reset_prefix_cache()
        with contextlib.redirect_stdout(io.StringIO()):
            main(args)
        return _side(json.loads((Path(d) / "vllm.json").read_text()))


def ours_side(srv: Server, reqs, tokenizer, a) -> Side:
    lv = serving.drive(srv, reqs, a.concurrency, None, warmup=1, goodput={}, tokenizer=tokenizer, seed=a.seed)
    return Side(output_tokens_per_s=lv.output_throughput, requests_per_s=lv.request_throughput,
                median_ttft_ms=lv.ttft_ms.median, median_tpot_ms=lv.tpot_ms.median, completed=lv.completed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the embedded SmolLM2-135M (BF16)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=0, help="also alternate vLLM's client run in this process with perf's, "
                    "this many pairs (0: not)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    if a.checkpoint is None:
        from ptq_deploy.models import resolve

        a.checkpoint = str(resolve("default").path)
    hw = detect()
    ecfg = engine.EngineConfig(max_model_len=a.max_model_len, seed=a.seed)
    cfg = engine.prepare(a.checkpoint, ecfg, hw)
    tokenizer = workload.load_tokenizer(cfg.model)
    reqs = workload.build(tokenizer, "random", a.num_prompts, a.input_len, a.output_len, a.seed)
    rounds, cmd, pairs = [], [], []
    with sigterm_as_interrupt(), Server(cfg) as srv:
        for i in range(a.pairs):
            order = ["vllm", "ours"] if i % 2 == 0 else ["ours", "vllm"]
            got = {side: (vllm_in_process(srv, a) if side == "vllm" else ours_side(srv, reqs, tokenizer, a))
                   for side in order}
            o, v = got["ours"], got["vllm"]
            pairs.append(Round(order=",".join(order), ours=o, vllm=v, ratio=o.output_tokens_per_s / v.output_tokens_per_s))
            print(f"pair {i} ({pairs[-1].order}, one process): vLLM's client {v.output_tokens_per_s:.1f} tok/s, "
                  f"perf's {o.output_tokens_per_s:.1f} tok/s, ratio {pairs[-1].ratio:.3f}", flush=True)
        for r in range(a.rounds):
            order = ["vllm", "ours"] if r % 2 == 0 else ["ours", "vllm"]
            got = {}
            for side in order:
                if side == "vllm":
                    got[side], cmd = vllm_side(srv, a)
                else:
                    got[side] = ours_side(srv, reqs, tokenizer, a)
            o, v = got["ours"], got["vllm"]
            rnd = Round(order=",".join(order), ours=o, vllm=v, ratio=o.output_tokens_per_s / v.output_tokens_per_s)
            rounds.append(rnd)
            print(f"round {r} ({rnd.order}): vllm bench serve {v.output_tokens_per_s:.1f} tok/s, ptq-deploy "
                  f"{o.output_tokens_per_s:.1f} tok/s, ratio {rnd.ratio:.3f}", flush=True)
    ratios = [x.ratio for x in rounds]
    ratio = Summary.of(ratios)
    in_process = None
    if pairs:
        pr = Summary.of([x.ratio for x in pairs])
        in_process = InProcess(pairs=pairs, ratio=pr, ratio_ci95=pr.ci95(),
                               ttft_ratio=Summary.of([x.ours.median_ttft_ms / x.vllm.median_ttft_ms for x in pairs]),
                               tpot_ratio=Summary.of([x.ours.median_tpot_ms / x.vllm.median_tpot_ms for x in pairs]))
    out = BenchResult(checkpoint=a.checkpoint, settings=cfg, concurrency=a.concurrency, num_prompts=a.num_prompts,
                      input_len=a.input_len, output_len=a.output_len, seed=a.seed, rounds=rounds, ratio=ratio,
                      ratio_ci95=ratio.ci95(),
                      ttft_ratio=Summary.of([x.ours.median_ttft_ms / x.vllm.median_ttft_ms for x in rounds]),
                      tpot_ratio=Summary.of([x.ours.median_tpot_ms / x.vllm.median_tpot_ms for x in rounds]),
                      meets_target=0.98 <= ratio.median <= 1.02, in_process=in_process, vllm_command=cmd,
                      env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND",
                                                      "VLLM_CPU_KVCACHE_SPACE") if k in os.environ},
                      provenance=collect(hw))
    path = a.output_dir / f"bench_serve_vs_vllm_{Path(a.checkpoint).name}_{file_stamp()}.json"
    atomic_write_json(path, out)
    lo, hi = out.ratio_ci95
    if in_process:
        lo_p, hi_p = in_process.ratio_ci95
        print(f"in one process, perf's client / vLLM's: median {in_process.ratio.median:.3f} over {a.pairs} pairs "
              f"(95% CI [{lo_p:.3f}, {hi_p:.3f}])")
    print(f"ratio ptq-deploy / vllm bench serve (output tok/s, concurrency {a.concurrency}): median "
          f"{ratio.median:.3f} over {len(rounds)} rounds (95% CI [{lo:.3f}, {hi:.3f}]) -> {path}")


if __name__ == "__main__":
    main()
