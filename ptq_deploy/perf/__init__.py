"""perf: how a checkpoint serves in vLLM (load, memory, latency, throughput, serving, roofline).

One module per benchmark, like vLLM's ``benchmarks/``: ``offline`` (load, memory, latency,
throughput on an in-process engine), ``serving`` (``vllm serve`` driven by vLLM's own async
benchmark client), ``roofline`` (decode bytes/token and memory-bandwidth utilisation). ``runner``
ties them together: ``run_perf(PerfConfig) -> PerfResult``, one JSON per run in ``perf_results/``.
"""

from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.result import PerfResult
from ptq_deploy.perf.runner import run_perf

__all__ = ["PerfConfig", "PerfResult", "run_perf"]
