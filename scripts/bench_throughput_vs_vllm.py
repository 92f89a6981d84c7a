"""Compare ptq-deploy's offline throughput with ``vllm bench throughput`` on the same checkpoint,
engine settings and workload, in the same run; write the ratio to perf_results/.

    python scripts/bench_throughput_vs_vllm.py [--checkpoint DIR] [--num-prompts 16 --input-len 64 --output-len 32]

Both sides: an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) built from the settings
``engine.resolve_settings`` picks (dtype, eager, max_model_len, seed, KV-cache space), vLLM's
``RandomDataset`` prompts for the same seed, temperature 1 / ignore_eos, one warm-up pass of the
workload. Runs are interleaved (vLLM, ptq-deploy, vLLM, ...) so that load from other jobs on the
machine hits both; the ratio is ptq-deploy's median over vLLM's median (target >= 0.98).
"""

from __future__ import annotations

import argparse
import datetime as _dt
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
from ptq_deploy.hardware import detect  # noqa: E402
from ptq_deploy.perf import offline, vllm_cli, workload  # noqa: E402
from ptq_deploy.provenance import Provenance, collect  # noqa: E402
from ptq_deploy.results import SCHEMA_VERSION, atomic_write_json  # noqa: E402
from ptq_deploy.stats import Summary  # noqa: E402


class Side(BaseModel):
    requests_per_s: Summary
    total_tokens_per_s: Summary
    output_tokens_per_s: Summary | None = None


class BenchResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str = "bench-throughput-vs-vllm"
    checkpoint: str
    settings: engine.EngineConfig
    num_prompts: int
    input_len: int
    output_len: int
    seed: int
    ptq_deploy: Side
    vllm_bench: Side
    vllm_command: list[str]
    ratio_requests_per_s: float  # ptq-deploy median / vllm median
    ratio_total_tokens_per_s: float
    target: float = 0.98
    meets_target: bool
    env: dict[str, str]
    provenance: Provenance


def vllm_bench(cfg: engine.EngineConfig, a) -> tuple[dict, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "vllm.json"
        cmd = [*vllm_cli.command(), "bench", "throughput", "--model", cfg.model, "--dataset-name", "random",
               "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_prompts),
               "--num-warmups", str(a.num_prompts), "--seed", str(cfg.seed), "--dtype", cfg.dtype,
               "--max-model-len", str(cfg.max_model_len), "--kv-cache-dtype", cfg.kv_cache_dtype,
               "--tensor-parallel-size", str(cfg.tensor_parallel_size), "--output-json", str(out)]
        if cfg.enforce_eager:
            cmd.append("--enforce-eager")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"error: vllm bench throughput failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.read_text()), cmd


def ours(cfg: engine.EngineConfig, hw, a) -> offline.ThroughputStats:
    llm, info = engine.load(cfg, hw)
    try:
        tok = workload.load_tokenizer(cfg.model)
        reqs = workload.build(tok, "random", a.num_prompts, a.input_len, a.output_len, cfg.seed)
        return offline.measure_throughput(llm, reqs, a.iterations, warmup=1)
    finally:
        engine.shutdown(llm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the embedded SmolLM2-135M (BF16)")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=3, help="timed passes per ptq-deploy engine")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each: vllm bench, then ptq-deploy)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", type=Path, default=Path("perf_results"))
    a = ap.parse_args()
    if a.checkpoint is None:
        from ptq_deploy.models import resolve

        a.checkpoint = str(resolve("default").path)
    hw = detect()
    cfg = engine.EngineConfig(model=a.checkpoint, max_model_len=a.max_model_len, seed=a.seed)
    engine.preflight(cfg, hw)
    cfg = engine.resolve_settings(cfg, hw)
    engine.configure_environment(cfg, hw)
    v_rps, v_tps, o_rps, o_tps, o_out, cmd = [], [], [], [], [], []
    for r in range(a.rounds):
        res, cmd = vllm_bench(cfg, a)
        v_rps.append(res["requests_per_second"])
        v_tps.append(res["tokens_per_second"])
        print(f"round {r}: vllm bench throughput {res['requests_per_second']:.3f} req/s", flush=True)
        t = ours(cfg, hw, a)
        o_rps.append(t.requests_per_s.median)
        o_tps.append(t.total_tokens_per_s.median)
        o_out.append(t.output_tokens_per_s.median)
        print(f"round {r}: ptq-deploy {t.requests_per_s}", flush=True)
    ratio_r = statistics.median(o_rps) / statistics.median(v_rps)
    ratio_t = statistics.median(o_tps) / statistics.median(v_tps)
    started = _dt.datetime.now(_dt.timezone.utc)
    out = BenchResult(checkpoint=a.checkpoint, settings=cfg, num_prompts=a.num_prompts, input_len=a.input_len,
                      output_len=a.output_len, seed=a.seed,
                      ptq_deploy=Side(requests_per_s=Summary.of(o_rps, "req/s"),
                                      total_tokens_per_s=Summary.of(o_tps, "tok/s"),
                                      output_tokens_per_s=Summary.of(o_out, "tok/s")),
                      vllm_bench=Side(requests_per_s=Summary.of(v_rps, "req/s"),
                                      total_tokens_per_s=Summary.of(v_tps, "tok/s")),
                      vllm_command=cmd, ratio_requests_per_s=ratio_r, ratio_total_tokens_per_s=ratio_t,
                      meets_target=ratio_r >= 0.98,
                      env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                                      "VLLM_CPU_KVCACHE_SPACE") if k in os.environ},
                      provenance=collect(hw))
    path = a.output_dir / f"bench_throughput_vs_vllm_{Path(a.checkpoint).name}_{started.strftime('%Y%m%dT%H%M%S')}.json"
    atomic_write_json(path, out)
    print(f"ratio ptq-deploy / vllm bench throughput: {ratio_r:.3f} (req/s), {ratio_t:.3f} (total tok/s) -> {path}")


if __name__ == "__main__":
    main()
