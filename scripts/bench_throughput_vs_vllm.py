"""Compare ptq-deploy's offline throughput with ``vllm bench throughput`` on the same checkpoint,
engine settings and workload, in the same run; write the ratio to perf_results/.

    python scripts/bench_throughput_vs_vllm.py [--checkpoint DIR] [--rounds 5] [--pairs 10] [--num-prompts 32 --input-len 128 --output-len 64]

Both sides run the same way, so that the only difference is the code that measures:
- each round starts one fresh process per side (``vllm bench throughput`` exits after one timed pass,
  so ptq-deploy's side is a fresh ``--side ours`` process too), and the order alternates between
  rounds (vLLM first, then ptq-deploy first, ...) so that drift on the machine hits both;
- the engine is built from the settings ``engine.resolve_settings`` picks (dtype, eager,
  max_model_len, seed, KV-cache space), in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``);
- prompts are vLLM's ``RandomDataset`` for the same seed, temperature 1 / ``ignore_eos``, one warm-up
  pass of the workload before timing; ptq-deploy's side is ``perf``'s own ``measure_throughput`` under its
  memory sampler, as ``perf`` runs it (median of ``--iterations`` timed passes, prefix cache emptied before
  each; its first pass is kept too).
- vLLM's side runs twice per round: as ``vllm bench throughput`` runs by default (``EngineArgs`` with the
  engine's per-step stats logging on), and with ``--disable-log-stats`` (what ``LLM()``, and so perf, runs
  with by default): the first ratio is what a user comparing the two tools sees, the second compares the
  same engine settings.

The figures are the per-round ratios ptq-deploy / vLLM (requests/s), with their spread over rounds and a
95% t-interval of the mean; the target is a median within 0.98-1.02 on the same settings.

Across processes, the round-to-round drift of a shared 2-core machine (one side's req/s moving by a third
between rounds) is larger than the difference looked for. ``--pairs N`` therefore also times the two
measuring codes on one engine in one process, alternating pass by pass: vLLM's own timed function
(``vllm.benchmarks.throughput._run_vllm_requests``, what ``vllm bench throughput`` times, on the requests
its random dataset gives) and perf's ``measure_throughput`` on perf's workload (the same prompts; checked),
the prefix cache emptied before each pass of either (vLLM's tool warms up on other prompts, so its timed
pass finds nothing cached). Each pair's ratio isolates what the two codes time; drift hits both passes of a
pair alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Same thread setting for both sides (children inherit it); on a shared 2-core box 2 OpenMP threads
# per engine make every run 20-40x slower and the comparison pure noise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from pydantic import BaseModel  # noqa: E402

from ptq_deploy import engine  # noqa: E402
from ptq_deploy.engine import vllm_cli  # noqa: E402
from ptq_deploy.engine.memory import PeakSampler  # noqa: E402
from ptq_deploy.hardware import detect  # noqa: E402
from ptq_deploy.perf import offline, workload  # noqa: E402
from ptq_deploy.provenance import Provenance, collect  # noqa: E402
from ptq_deploy.results import SCHEMA_VERSION, atomic_write_json  # noqa: E402
from ptq_deploy.stats import Summary  # noqa: E402
from ptq_deploy.timeutil import file_stamp  # noqa: E402


class Round(BaseModel):
    order: str  # e.g. "vllm,vllm-nostats,ours"
    vllm_requests_per_s: float  # vllm bench throughput as it runs by default (stats logging on)
    vllm_total_tokens_per_s: float
    vllm_nostats_requests_per_s: float  # with --disable-log-stats, as LLM() / perf run
    ours_requests_per_s: float  # median of the side's timed passes
    ours_first_pass_requests_per_s: float  # its first timed pass alone (vLLM's side times one pass)
    ours_total_tokens_per_s: float
    ours_passes: int
    ratio: float  # ours / vllm (default settings), requests/s
    ratio_same_settings: float  # ours / vllm --disable-log-stats


class InProcess(BaseModel):
    """Both measuring codes alternating on one engine (``--pairs``)."""

    vllm_requests_per_s: list[float]  # _run_vllm_requests, pass by pass
    ours_requests_per_s: list[float]  # perf's measure_throughput, one pass each
    orders: list[str]
    ratio: Summary  # per pair, ours / vllm
    ratio_ci95: tuple[float, float]


class BenchResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str = "bench-throughput-vs-vllm"
    checkpoint: str
    settings: engine.ResolvedEngine
    num_prompts: int
    input_len: int
    output_len: int
    seed: int
    rounds: list[Round]
    ptq_deploy_requests_per_s: Summary  # over rounds
    vllm_requests_per_s: Summary
    ratio: Summary  # per-round ratios vs vllm bench throughput's defaults
    ratio_ci95: tuple[float, float]  # t-interval of the mean per-round ratio
    ratio_of_medians: float
    ratio_same_settings: Summary | None = None  # per-round ratios vs --disable-log-stats (perf's engine setting)
    ratio_same_settings_ci95: tuple[float, float] | None = None
    ratio_first_pass_same_settings: Summary | None = None  # ours' first pass alone / vllm --disable-log-stats
    in_process: InProcess | None = None  # --pairs: both measuring codes on one engine
    target: tuple[float, float] = (0.98, 1.02)
    meets_target: bool  # median same-settings ratio within the target
    vllm_command: list[str]
    env: dict[str, str]
    provenance: Provenance


def vllm_side(cfg: engine.ResolvedEngine, a, stats: bool = True) -> tuple[dict, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "vllm.json"
        # the engine flags are the ones `vllm serve` gets (engine.serve_flags): one road to vLLM
        cmd = [*vllm_cli.command(), "bench", "throughput", "--model", cfg.model, "--dataset-name", "random",
               "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_prompts),
               "--num-warmups", str(a.num_prompts), "--output-json", str(out), *engine.serve_flags(cfg),
               *([] if stats else ["--disable-log-stats"])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"error: vllm bench throughput failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.read_text()), cmd


def run_ours(ecfg: engine.EngineConfig, cfg: engine.ResolvedEngine, hw, a) -> None:
    llm, _ = engine.load(cfg.model, ecfg, hw)
    try:
        tok = workload.load_tokenizer(cfg.model)
        reqs = workload.build(tok, "random", a.num_prompts, a.input_len, a.output_len, cfg.seed)
        # perf's measure_throughput under perf's memory sampler, one pass per call so that each pass is kept
        passes = []
        for i in range(a.iterations):
            with PeakSampler():
                passes.append(offline.measure_throughput(llm, reqs, 1, warmup=1 if i == 0 else 0))
    finally:
        engine.shutdown(llm)
    Path(a.side_output).write_text(json.dumps({
        "passes_requests_per_s": [t.requests_per_s.median for t in passes], "iterations": len(passes),
        "total_tokens_per_s": statistics.median(t.total_tokens_per_s.median for t in passes)}))


def run_pairs(ecfg: engine.EngineConfig, cfg: engine.ResolvedEngine, hw, a) -> None:
    from vllm.benchmarks.datasets import RandomDataset
    from vllm.benchmarks.throughput import _run_vllm_requests

    llm, _ = engine.load(cfg.model, ecfg, hw)
    try:
        tok = workload.load_tokenizer(cfg.model)
        samples = RandomDataset(random_seed=a.seed).sample(  # what `vllm bench throughput --dataset-name random` times
            tokenizer=tok, num_requests=a.num_prompts, prefix_len=0, input_len=a.input_len,
            output_len=a.output_len, range_ratio=0.0)
        reqs = workload.build(tok, "random", a.num_prompts, a.input_len, a.output_len, cfg.seed)
        if [s.prompt for s in samples] != [r.prompt for r in reqs]:
            sys.exit("error: perf's random workload and vLLM's random dataset gave different prompts")

        def vllm_pass() -> float:
            offline.reset_prefix_cache(llm)
            dt, _ = _run_vllm_requests(llm, samples, n=1, disable_detokenize=False, do_profile=False,
                                       prequeue_requests=False, enable_lora=False)
            return a.num_prompts / dt

        def ours_pass() -> float:
            with PeakSampler():  # as perf's runner times it
                return offline.measure_throughput(llm, reqs, 1, warmup=0).requests_per_s.median

        vllm_pass(), ours_pass()  # warm-up: one pass of each
        got: dict[str, list[float]] = {"vllm": [], "ours": []}
        orders = []
        for i in range(a.pairs):
            order = ("vllm", "ours") if i % 2 == 0 else ("ours", "vllm")
            for side in order:
                got[side].append(vllm_pass() if side == "vllm" else ours_pass())
            orders.append(",".join(order))
            print(f"pair {i} ({orders[-1]}): vLLM's timing {got['vllm'][-1]:.3f} req/s, perf's "
                  f"{got['ours'][-1]:.3f} req/s", file=sys.stderr, flush=True)
    finally:
        engine.shutdown(llm)
    ratio = Summary.of([o / v for o, v in zip(got["ours"], got["vllm"])])
    Path(a.side_output).write_text(InProcess(vllm_requests_per_s=got["vllm"], ours_requests_per_s=got["ours"],
                                             orders=orders, ratio=ratio, ratio_ci95=ratio.ci95()).model_dump_json())


def side_process(side: str, a) -> str:
    """Run ``--side SIDE`` in a fresh process; returns what it wrote."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "side.json"
        cmd = [sys.executable, __file__, "--side", side, "--side-output", str(out), "--checkpoint", a.checkpoint,
               "--num-prompts", str(a.num_prompts), "--input-len", str(a.input_len), "--output-len", str(a.output_len),
               "--iterations", str(a.iterations), "--pairs", str(a.pairs), "--max-model-len", str(a.max_model_len),
               "--seed", str(a.seed)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"error: the {side} side failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        return out.read_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the embedded SmolLM2-135M (BF16)")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3, help="timed passes in ptq-deploy's process (perf's default)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each one fresh process per side, order alternating")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", type=Path, default=Path("perf_results"))
    ap.add_argument("--pairs", type=int, default=0, help="also time both measuring codes alternating on one engine, "
                    "this many pairs (0: not)")
    ap.add_argument("--side", choices=["ours", "pairs"], help=argparse.SUPPRESS)
    ap.add_argument("--side-output", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.checkpoint is None:
        from ptq_deploy.models import resolve

        a.checkpoint = str(resolve("default").path)
    hw = detect()
    ecfg = engine.EngineConfig(max_model_len=a.max_model_len, seed=a.seed)
    cfg = engine.prepare(a.checkpoint, ecfg, hw)
    if a.side == "ours":
        return run_ours(ecfg, cfg, hw, a)
    if a.side == "pairs":
        return run_pairs(ecfg, cfg, hw, a)
    in_process = InProcess.model_validate_json(side_process("pairs", a)) if a.pairs else None
    if in_process:
        lo, hi = in_process.ratio_ci95
        print(f"in one process, ptq-deploy's timing / vLLM's: median {in_process.ratio.median:.3f} over {a.pairs} "
              f"pairs (95% CI [{lo:.3f}, {hi:.3f}])", flush=True)

    rounds, cmd = [], []
    sides = ["vllm", "vllm-nostats", "ours"]
    for r in range(a.rounds):
        order = sides[r % 3:] + sides[:r % 3]  # each side first, second and third in turn
        got = {}
        for side in order:
            if side == "vllm":
                got[side], cmd = vllm_side(cfg, a)
            elif side == "vllm-nostats":
                got[side], _ = vllm_side(cfg, a, stats=False)
            else:
                got["ours"] = json.loads(side_process("ours", a))
        v, vn, o = got["vllm"], got["vllm-nostats"], got["ours"]
        med = statistics.median(o["passes_requests_per_s"])
        rnd = Round(order=",".join(order), vllm_requests_per_s=v["requests_per_second"],
                    vllm_total_tokens_per_s=v["tokens_per_second"],
                    vllm_nostats_requests_per_s=vn["requests_per_second"], ours_requests_per_s=med,
                    ours_first_pass_requests_per_s=o["passes_requests_per_s"][0],
                    ours_total_tokens_per_s=o["total_tokens_per_s"], ours_passes=o["iterations"],
                    ratio=med / v["requests_per_second"], ratio_same_settings=med / vn["requests_per_second"])
        rounds.append(rnd)
        print(f"round {r} ({rnd.order}): vllm {rnd.vllm_requests_per_s:.3f} req/s, --disable-log-stats "
              f"{rnd.vllm_nostats_requests_per_s:.3f}, ptq-deploy {rnd.ours_requests_per_s:.3f} req/s (first pass "
              f"{rnd.ours_first_pass_requests_per_s:.3f}); ratios {rnd.ratio:.3f} / {rnd.ratio_same_settings:.3f}",
              flush=True)
    ratios = [x.ratio for x in rounds]
    same = [x.ratio_same_settings for x in rounds]
    ours_rps = Summary.of([x.ours_requests_per_s for x in rounds], "req/s")
    vllm_rps = Summary.of([x.vllm_requests_per_s for x in rounds], "req/s")
    ratio = Summary.of(ratios)
    out = BenchResult(checkpoint=a.checkpoint, settings=cfg, num_prompts=a.num_prompts, input_len=a.input_len,
                      output_len=a.output_len, seed=a.seed, rounds=rounds, ptq_deploy_requests_per_s=ours_rps,
                      vllm_requests_per_s=vllm_rps, ratio=ratio, ratio_ci95=ratio.ci95(),
                      ratio_of_medians=ours_rps.median / vllm_rps.median,
                      ratio_same_settings=Summary.of(same), ratio_same_settings_ci95=Summary.of(same).ci95(),
                      ratio_first_pass_same_settings=Summary.of([x.ours_first_pass_requests_per_s
                                                                 / x.vllm_nostats_requests_per_s for x in rounds]),
                      meets_target=0.98 <= statistics.median(same) <= 1.02, in_process=in_process, vllm_command=cmd,
                      env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                                      "VLLM_CPU_KVCACHE_SPACE") if k in os.environ},
                      provenance=collect(hw))
    path = a.output_dir / f"bench_throughput_vs_vllm_{Path(a.checkpoint).name}_{file_stamp()}.json"
    atomic_write_json(path, out)
    for name, s, (lo, hi) in (("vllm bench throughput (its defaults)", ratio, out.ratio_ci95),
                              ("vllm bench throughput --disable-log-stats", out.ratio_same_settings,
                               out.ratio_same_settings_ci95)):
        print(f"ratio ptq-deploy / {name}: median {s.median:.3f} over {len(rounds)} rounds "
              f"(mean {s.mean:.3f}, 95% CI [{lo:.3f}, {hi:.3f}], min {s.min:.3f}, max {s.max:.3f})")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
