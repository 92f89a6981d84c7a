"""``inspect --runtime``: load the checkpoint in vLLM and report the linear kernel vLLM selected."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ptq_deploy import engine, probe
from ptq_deploy.checkpoint import Quantization
from ptq_deploy.engine.kernels import vllm_linear_kernels
from ptq_deploy.errors import NotRunnableHere, PtqError
from ptq_deploy.hardware import detect
from ptq_deploy.inspection.report import RuntimeInfo


def runtime(path: Path, q: Quantization, max_position: int | None, find) -> RuntimeInfo:
    hw = detect()
    rules = probe.rules(hw)
    sup = rules.scheme(q)
    if not sup.runnable:
        return RuntimeInfo(loaded=False, not_runnable=str(NotRunnableHere(
            f"{q.name} checkpoint cannot run in vLLM here: {sup.reason} [{sup.source}]")))
    kv_dtype = "bfloat16" if q.kv_cache is not None and not rules.kv(q.kv_cache_dtype).runnable else "auto"
    cfg = engine.EngineConfig(max_model_len=min(2048, max_position or 2048), kv_cache_dtype=kv_dtype)
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model ships a function to workers
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # keep stdout for the report (--json)
    try:
        llm, einfo = engine.load(path, cfg, hw)
    except NotRunnableHere as e:
        return RuntimeInfo(loaded=False, not_runnable=str(e))
    except PtqError as e:
        find("error", "runtime-load-failed", str(e))
        return RuntimeInfo(loaded=False)
    try:
        kernels: Counter = Counter()
        try:
            for part in llm.apply_model(vllm_linear_kernels):
                kernels.update(part)
        except Exception as e:  # noqa: BLE001  the kernel walk is best effort
            kernels = Counter({f"unknown ({type(e).__name__})": 0})
    finally:
        engine.shutdown(llm)
    if q.kind != "dense" and kernels and all(k.startswith("UnquantizedLinearMethod") for k in kernels):
        find("error", "runtime-not-quantized", f"vLLM loaded {q.name} with unquantized Linear layers only")
    return RuntimeInfo(loaded=True, quantization=einfo.quantization, dtype=einfo.dtype, kv_cache_dtype=einfo.kv_cache_dtype,
                       load_time_s=einfo.load_time_s, linear_kernels=dict(kernels))
