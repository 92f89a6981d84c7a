"""Serving benchmark: ``vllm serve CHECKPOINT`` (``engine.server``) driven by vLLM's own async streaming
client (``vllm.benchmarks.serve.benchmark``) at each concurrency level of each workload shape. Metric maths
are vLLM's (``calculate_metrics``); we add per-request spreads and the prefix-cache hits of each level.

The load sweep (``PerfSettings.concurrency`` unset) doubles the concurrency from 1 and stops after the level
where output tok/s rose by less than ``saturation`` (the server is saturated), where a goodput SLO's p99
broke (the latency target is lost), at ``max_concurrency``, or once the shape has run ``sweep_budget_s``:
a small model on a CPU and an 8B on a GPU both get their curve up to the knee, in bounded time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from typing import Any

from pydantic import BaseModel, model_validator

from ptq_deploy.engine import ResolvedEngine, parse_load_log
from ptq_deploy.engine.memory import PeakSampler, parse_memory_log, tree_pids, tree_rss
from ptq_deploy.engine.server import Server, sigterm_as_interrupt
from ptq_deploy.errors import PtqError
from ptq_deploy.hardware import nvml
from ptq_deploy.perf.config import PerfSettings, Shape
from ptq_deploy.perf.energy import Energy, EnergyMeter
from ptq_deploy.perf.workload import Request, build, load_tokenizer
from ptq_deploy.stats import Summary

# a warm-up request runs a prefill and a decode step at the level's concurrency (as offline's warm-up)
WARMUP_OUTPUT_TOKENS = 2


# ---------------------------------------------------------------------- results
class ServingLevel(BaseModel):
    concurrency: int
    request_rate: float | None  # None: as fast as the concurrency allows
    num_requests: int
    completed: int
    failed: int
    duration_s: float
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2el_ms: Summary
    request_throughput: float  # req/s over duration_s (n = completed)
    output_throughput: float  # tok/s
    total_token_throughput: float
    request_goodput: float | None
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    prompt_tokens_requested: int
    prompt_tokens_counted: int  # as the server reported (usage)
    output_tokens_requested: int
    output_tokens_counted: int
    peak_server_rss_bytes: int
    prompt_tokens_from_cache: int | None = None  # vLLM's prefix-cache hits during the level (0 after the reset)
    energy: Energy | None = None  # the timed level (n = 1)
    vllm_reported: dict[str, float]  # vLLM's own aggregate numbers, for cross-checking
    errors: list[str] = []


class ServerStats(BaseModel):
    command: list[str]
    startup_s: Summary  # spawn -> /health 200
    weights_load_s: float | None  # vLLM's "Loading weights took"
    model_load_s: float | None  # vLLM's "Model loading took ... seconds"
    kv_cache_tokens: int | None  # vLLM's "KV cache size: N tokens"
    compile_cache: str | None = None  # warm (graphs loaded from cache) | cold (compiled) | None (eager / not logged)
    rss_after_start_bytes: int  # the server's process tree: the engine's own on CPU
    gpu_process_bytes: int | None = None  # NVML per-process GPU memory of the server's process tree
    weights_bytes_vllm: int | None = None  # vLLM's "Model loading took X GiB memory" (GPU)
    kv_cache_bytes_vllm: int | None = None  # vLLM's KV-cache memory (its log)


def breaks(lv: ServingLevel, slos_ms: dict[str, float]) -> list[str]:
    """The SLOs whose p99 the level misses, one phrase each (``ttft p99 812 ms > 500``)."""
    stats = {"ttft": lv.ttft_ms, "tpot": lv.tpot_ms, "e2el": lv.e2el_ms}
    return [f"{k} p99 {stats[k].p99:.4g} ms > {v:g}" for k, v in slos_ms.items()
            if stats[k].n == 0 or stats[k].p99 > v]


class ServingCurve(BaseModel):
    """One workload shape's levels, lowest concurrency first, and why the sweep stopped where it did."""

    shape: str
    input_len: int | None = None  # None: a result written before shapes (the perf workload's)
    output_len: int | None = None
    levels: list[ServingLevel]
    stopped: str = "every level given"

    def peak(self) -> ServingLevel | None:
        return max(self.levels, key=lambda lv: lv.output_throughput, default=None)


class ServingStats(BaseModel):
    endpoint: str = "openai /v1/completions (streaming)"
    client: str = "vllm.benchmarks.serve.benchmark"
    warmup_requests_per_level: int
    warmup_output_tokens: int | None = None  # None: older results (the full output)
    goodput_slos_ms: dict[str, float]
    server: ServerStats
    curves: list[ServingCurve]

    @model_validator(mode="before")
    @classmethod
    def _one_curve(cls, data: Any) -> Any:
        """Results written before shapes held one list of levels: the perf workload's curve."""
        if isinstance(data, dict) and "levels" in data and "curves" not in data:
            data = {**data, "curves": [{"shape": "workload", "levels": data["levels"]}]}
            data.pop("levels")
        return data

    @property
    def levels(self) -> list[ServingLevel]:
        """The first shape's levels (the perf workload's when no shapes were given)."""
        return self.curves[0].levels if self.curves else []


def _level(c: int, rate: float | None, reqs: list[Request], res: dict[str, Any], peak_rss: int) -> ServingLevel:
    ok = [i for i, e in enumerate(res["errors"]) if not e]
    ttft = [res["ttfts"][i] * 1e3 for i in ok]
    e2el = [res["latencies"][i] * 1e3 for i in ok]
    outl = [res["output_lens"][i] for i in ok]
    tpot = [(e - t) / (n - 1) for e, t, n in zip(e2el, ttft, outl) if n > 1]  # as vLLM's calculate_metrics
    itl = [x * 1e3 for i in ok for x in res["itls"][i]]
    keys = ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
            "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms")
    return ServingLevel(
        concurrency=c, request_rate=rate, num_requests=len(reqs), completed=res["completed"], failed=res["failed"],
        duration_s=res["duration"], ttft_ms=Summary.of(ttft, "ms"), tpot_ms=Summary.of(tpot, "ms"),
        itl_ms=Summary.of(itl, "ms"), e2el_ms=Summary.of(e2el, "ms"),
        request_throughput=res["request_throughput"], output_throughput=res["output_throughput"],
        total_token_throughput=res["total_token_throughput"], request_goodput=res.get("request_goodput"),
        max_output_tokens_per_s=res["max_output_tokens_per_s"], max_concurrent_requests=res["max_concurrent_requests"],
        prompt_tokens_requested=sum(r.prompt_len for r in reqs), prompt_tokens_counted=res["total_input_tokens"],
        output_tokens_requested=sum(r.output_len for r in reqs), output_tokens_counted=res["total_output_tokens"],
        peak_server_rss_bytes=peak_rss, vllm_reported={k: float(res[k]) for k in keys if k in res},
        errors=sorted({e.strip().splitlines()[-1][:200] for e in res["errors"] if e}))


def drive(server: Server, reqs: list[Request], concurrency: int, request_rate: float | None, warmup: int,
          goodput: dict[str, float], tokenizer, seed: int) -> ServingLevel:
    import asyncio

    import numpy as np
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    samples = [SampleRequest(prompt=r.prompt, prompt_len=r.prompt_len, expected_output_len=r.output_len,
                             request_id=f"ptq-c{concurrency}-{i}-{os.getpid()}") for i, r in enumerate(reqs)]

    def run(inputs, rate):
        return asyncio.run(benchmark(
            task_type=TaskType.GENERATION, endpoint_type="openai", api_url=server.base_url + "/v1/completions",
            base_url=server.base_url, model_id=server.cfg.model, model_name=None, tokenizer=tokenizer,
            input_requests=inputs, logprobs=None, request_rate=rate, burstiness=1.0,
            disable_tqdm=True, num_warmups=0, profile=False,
            selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"], selected_percentiles=[50, 90, 99],
            ignore_eos=True, goodput_config_dict=dict(goodput), max_concurrency=concurrency, lora_modules=None,
            extra_headers=None, extra_body=None, ready_check_timeout_sec=0))

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if warmup:  # warm-up * concurrency short requests at this concurrency, then forget their cached prefixes
            n = warmup * concurrency
            run([dataclasses.replace(s, request_id=f"{s.request_id}-warm{k}",
                                     expected_output_len=min(WARMUP_OUTPUT_TOKENS, s.expected_output_len))
                 for k, s in enumerate((samples * (n // len(samples) + 1))[:n])], float("inf"))
        server.reset_prefix_cache()
        hits0 = server.prefix_cache_hits()
        np.random.seed(seed)  # vLLM draws Poisson arrival gaps from numpy's global RNG
        meter = EnergyMeter()
        with PeakSampler(server.proc.pid) as mem, meter.phase():
            res = run(samples, request_rate or float("inf"))
        # vLLM 0.20's benchmark() returns no per-request latencies: first token + the inter-token gaps
        res.setdefault("latencies", [t + sum(i) for t, i in zip(res["ttfts"], res["itls"])])
        hits1 = server.prefix_cache_hits()
    server.check_alive()
    if res["completed"] == 0:
        errs = [e for e in res["errors"] if e]
        raise PtqError(f"every serving request failed at concurrency {concurrency}: "
                       f"{(errs[0].strip().splitlines() or ['?'])[-1] if errs else '?'}")
    lv = _level(concurrency, request_rate, reqs, res, mem.peak_rss)
    lv.prompt_tokens_from_cache = hits1 - hits0 if hits0 is not None and hits1 is not None else None
    lv.energy = meter.result([lv.output_tokens_counted])
    return lv


def sweep(server: Server, name: str, shape: Shape, s: PerfSettings, tokenizer, dataset: str, seed: int,
          say=lambda msg: None) -> ServingCurve:
    """One shape's curve: the given levels, or the load sweep up to the knee (module docstring)."""
    levels: list[ServingLevel] = []
    stopped = "every level given" if not s.adaptive else f"max concurrency {s.max_concurrency} reached"
    t0 = time.perf_counter()
    for c in s.levels():
        if s.adaptive and levels and time.perf_counter() - t0 > s.sweep_budget_s:
            stopped = f"sweep budget {s.sweep_budget_s:g} s spent after concurrency {levels[-1].concurrency}"
            break
        reqs = build(tokenizer, dataset, s.requests_at(c), shape.input_len, shape.output_len, seed)
        lv = drive(server, reqs, c, s.request_rate, s.warmup, s.goodput, tokenizer, seed)
        levels.append(lv)
        say(f"serving {name} ({shape.label()}): concurrency {c}: {lv.output_throughput:.4g} output tok/s, "
            f"TTFT p99 {lv.ttft_ms.p99:.4g} ms, TPOT p99 {lv.tpot_ms.p99:.4g} ms")
        if not s.adaptive:
            continue
        broken = breaks(lv, s.goodput)
        if broken:
            stopped = f"latency target broken at concurrency {c}: " + "; ".join(broken)
            break
        if len(levels) > 1:
            prev = levels[-2]
            gain = lv.output_throughput / prev.output_throughput - 1 if prev.output_throughput > 0 else float("inf")
            if gain < s.saturation:
                stopped = (f"saturated: concurrency {c} gave {gain:+.0%} output tok/s over concurrency "
                           f"{prev.concurrency} (< {s.saturation:.0%})")
                break
    return ServingCurve(shape=name, input_len=shape.input_len, output_len=shape.output_len, levels=levels,
                        stopped=stopped)


def run_serving(cfg: ResolvedEngine, s: PerfSettings, dataset: str, seed: int, on_started=None,
                say=lambda msg: None) -> ServingStats:
    """Start the server, sweep every shape, always stop the server."""
    tokenizer = load_tokenizer(cfg.model)
    with sigterm_as_interrupt(), Server(cfg, s.server_timeout_s) as srv:
        if on_started is not None:
            on_started(srv)
        rss0 = tree_rss(srv.proc.pid)
        gpu0 = nvml.process_memory(tree_pids(srv.proc.pid)) if cfg.gpus else None
        curves = [sweep(srv, name, shape, s, tokenizer, dataset, seed, say)
                  for name, shape in s.serving_shapes().items()]
        log = srv.log_path.read_text(errors="replace")
        stats = ServerStats(command=srv.command, startup_s=Summary.of([srv.startup_s], "s"),
                            rss_after_start_bytes=rss0, gpu_process_bytes=gpu0, **parse_load_log(log),
                            **parse_memory_log(log))
    return ServingStats(warmup_requests_per_level=s.warmup, warmup_output_tokens=WARMUP_OUTPUT_TOKENS,
                        goodput_slos_ms=s.goodput, server=stats, curves=curves)
