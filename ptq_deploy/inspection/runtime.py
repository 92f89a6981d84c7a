"""``inspect --runtime``: load the checkpoint in vLLM and report the linear kernel vLLM selected."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ptq_deploy import engine, probe
from ptq_deploy.checkpoint import Quantization
from ptq_deploy.errors import NotRunnableHere, PtqError
from ptq_deploy.hardware import detect
from ptq_deploy.inspection.report import RuntimeInfo


def vllm_linear_kernels(model) -> dict[str, int]:
    """Runs inside a vLLM worker: ``"method / scheme / kernel" -> count`` over the Linear modules."""
    from vllm.model_executor.layers.linear import LinearBase  # runs where vLLM is loaded

    found: Counter = Counter()
    for _, mod in model.named_modules():
        if not isinstance(mod, LinearBase):
            continue
        qm = getattr(mod, "quant_method", None)
        parts = [type(qm).__name__ if qm is not None else "none"]
        sch = getattr(mod, "scheme", None) or getattr(qm, "scheme", None)
        if sch is not None:
            parts.append(type(sch).__name__)
        kernels = [type(v).__name__ for obj in (sch, qm) if obj is not None for v in vars(obj).values()
                   if "Kernel" in type(v).__name__]
        parts += sorted(set(kernels)) or []
        found[" / ".join(parts)] += 1
    return dict(found)


def vllm_attention_backends(model) -> dict[str, int]:
    """Runs inside a vLLM worker: attention backend class -> count over the attention layers."""
    found: Counter = Counter()
    for _, mod in model.named_modules():
        backend = getattr(mod, "attn_backend", None)
        if backend is not None and hasattr(mod, "kv_cache_dtype"):
            found[getattr(backend, "__name__", type(backend).__name__)] += 1
    return dict(found)


def main_kernel(kernels: dict[str, int]) -> str | None:
    """The kernel most quantized Linear layers use (the last part of ``vllm_linear_kernels``' key)."""
    quantized = {k: n for k, n in kernels.items() if not k.startswith("UnquantizedLinearMethod")}
    pick = quantized or kernels
    return max(pick, key=pick.get).split(" / ")[-1] if pick else None


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
