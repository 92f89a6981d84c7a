"""Offline benchmarks on an in-process engine: latency (batch 1 and batch N) and throughput.

Sampling follows ``vllm bench latency/throughput``: temperature 1.0, top_p 1.0, ``ignore_eos`` and
``max_tokens = output_len``, so every request generates exactly ``output_len`` tokens — which is
checked, request by request, against what the engine returned.

The benchmarks repeat the same prompts (warm-up, iterations, prefill-only then full requests), so
vLLM's prefix cache is emptied before every timed call: otherwise a repeated prompt's prefill is
served from cache and latency, decode time and throughput all look better than a new request gets.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from ptq_deploy.errors import PtqError
from ptq_deploy.perf.energy import Energy, EnergyMeter
from ptq_deploy.perf.workload import Request
from ptq_deploy.stats import Summary


def _params(max_tokens: int, seed: int | None = None):
    from vllm import SamplingParams

    return SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens, seed=seed)


class TokenCheck(BaseModel):
    prompt_tokens_requested: int
    prompt_tokens_counted: int
    output_tokens_requested: int
    output_tokens_counted: int
    prompt_tokens_from_cache: int = 0  # vLLM's num_cached_tokens; 0 unless the prefix-cache reset failed

    @property
    def ok(self) -> bool:
        return (self.prompt_tokens_counted == self.prompt_tokens_requested
                and self.output_tokens_counted == self.output_tokens_requested)


def reset_prefix_cache(llm) -> None:
    try:
        llm.reset_prefix_cache()
    except (AttributeError, NotImplementedError):  # older vLLM / prefix caching off
        pass


def _run(llm, reqs: list[Request], max_tokens: int | None = None):
    """Generate; returns (seconds, TokenCheck). Raises if the engine returned other token counts."""
    params = [_params(max_tokens or r.output_len) for r in reqs]
    reset_prefix_cache(llm)
    t0 = time.perf_counter()
    outs = llm.generate([r.prompt for r in reqs], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    chk = TokenCheck(prompt_tokens_requested=sum(r.prompt_len for r in reqs),
                     prompt_tokens_counted=sum(len(o.prompt_token_ids or []) for o in outs),
                     output_tokens_requested=sum(max_tokens or r.output_len for r in reqs),
                     output_tokens_counted=sum(len(c.token_ids) for o in outs for c in o.outputs),
                     prompt_tokens_from_cache=sum(getattr(o, "num_cached_tokens", None) or 0 for o in outs))
    if not chk.ok:
        raise PtqError(f"token counts differ from the workload: {chk.model_dump()}")
    return dt, chk


class LatencyStats(BaseModel):
    """Sequential (batch 1) per-request latencies and whole-batch latencies, after warm-up."""

    prompts: int
    iterations: int
    warmup: int
    warmup_output_tokens: int | None = None  # tokens each warm-up request generated (None: output_len, older results)
    batch1_e2e: Summary  # s per request (n = prompts x iterations, or fewer with ``latency_ci``)
    batch1_ci: float | None = None  # the target relative 95% half-width of the mean batch-1 latency, if any
    batch1_ci_reached: float | None = None  # the relative half-width measured when timing stopped
    batch1_prefill: Summary  # s per request with max_tokens=1 (time to first token, offline)
    batch1_decode_per_token: Summary  # s, (e2e - prefill of the same prompt) / (output_len - 1)
    batch_size: int
    batch_e2e: Summary  # s per batch (n = iterations)
    tokens: TokenCheck  # of one timed batch


MIN_LATENCY_REQUESTS = 3
# A warm-up request runs every shape the timed calls run (prefill, then a decode step) at batch 1 and at the
# batch size; generating the whole output again would only repeat the decode step (eager CPU: the same
# kernels; GPU: vLLM compiles and captures its graphs while loading). An emulated scheme's full-length
# warm-up cost as much as its timed batch-1 requests.
WARMUP_OUTPUT_TOKENS = 2


def _precise_enough(e2e: list[float], rel_ci: float | None) -> bool:
    if rel_ci is None or len(e2e) < MIN_LATENCY_REQUESTS:
        return False
    s = Summary.of(e2e)
    return s.ci95_half_width() <= rel_ci * s.mean


def measure_latency(llm, reqs: list[Request], batch_reqs: list[Request], iterations: int,
                    warmup: int, rel_ci: float | None = None) -> tuple[LatencyStats, list[float]]:
    """Returns the stats and the raw per-request decode times (s/token) for the roofline.

    With ``rel_ci``, batch-1 requests are timed until the 95% interval of their mean is within
    ``+-rel_ci`` of it: a slow (emulated) scheme reaches the width the others have with fewer requests.
    """
    out_len = reqs[0].output_len
    warm = min(WARMUP_OUTPUT_TOKENS, out_len)
    for _ in range(warmup):
        _run(llm, reqs[:1], max_tokens=warm)
        _run(llm, batch_reqs, max_tokens=warm)
    e2e, pre, dec = [], [], []
    for r in (r for _ in range(iterations) for r in reqs):
        p, _ = _run(llm, [r], max_tokens=1)
        t, _ = _run(llm, [r])
        pre.append(p)
        e2e.append(t)
        dec.append((t - p) / (out_len - 1))
        if _precise_enough(e2e, rel_ci):
            break
    batch, chk = [], None
    for _ in range(iterations):
        t, chk = _run(llm, batch_reqs)
        batch.append(t)
    b1 = Summary.of(e2e, "s")
    stats = LatencyStats(prompts=len(reqs), iterations=iterations, warmup=warmup, warmup_output_tokens=warm,
                         batch1_e2e=b1, batch1_ci=rel_ci,
                         batch1_ci_reached=b1.ci95_half_width() / b1.mean if b1.n > 1 else None,
                         batch1_prefill=Summary.of(pre, "s"), batch1_decode_per_token=Summary.of(dec, "s"),
                         batch_size=len(batch_reqs), batch_e2e=Summary.of(batch, "s"), tokens=chk)
    return stats, dec


class ThroughputStats(BaseModel):
    """A fixed workload submitted at once (``llm.generate`` schedules it), timed per iteration."""

    num_requests: int
    iterations: int
    warmup: int
    elapsed: Summary  # s
    requests_per_s: Summary
    output_tokens_per_s: Summary
    total_tokens_per_s: Summary
    tokens: TokenCheck  # per iteration (identical every iteration)
    energy: Energy | None = None  # per iteration (NVML; says why not where there is none)


def measure_throughput(llm, reqs: list[Request], iterations: int, warmup: int) -> ThroughputStats:
    for _ in range(warmup):
        _run(llm, reqs)
    el, chk, meter = [], None, EnergyMeter()
    for _ in range(iterations):
        with meter.phase():
            t, chk = _run(llm, reqs)
        el.append(t)
    out_tok, tot_tok = chk.output_tokens_counted, chk.output_tokens_counted + chk.prompt_tokens_counted
    return ThroughputStats(num_requests=len(reqs), iterations=iterations, warmup=warmup, elapsed=Summary.of(el, "s"),
                           requests_per_s=Summary.of([len(reqs) / t for t in el], "req/s"),
                           output_tokens_per_s=Summary.of([out_tok / t for t in el], "tok/s"),
                           total_tokens_per_s=Summary.of([tot_tok / t for t in el], "tok/s"), tokens=chk,
                           energy=meter.result([out_tok] * iterations))


def kv_capacity(llm) -> tuple[int | None, int | None, float | None]:
    """(blocks, block size, vLLM's max concurrency at max_model_len) of the KV cache vLLM allocated."""
    try:
        cc = llm.llm_engine.vllm_config.cache_config
    except AttributeError:
        return None, None, None
    return cc.num_gpu_blocks, cc.block_size, getattr(cc, "kv_cache_max_concurrency", None)
