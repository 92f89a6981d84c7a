"""Which kernels a loaded vLLM engine chose: per Linear module (method / scheme / kernel) and per attention
layer (backend). The functions run inside a vLLM worker (``LLM.apply_model``)."""

from __future__ import annotations

import re
from collections import Counter


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


def vllm_attention_kv_dtypes(model) -> dict[str, list[str]]:
    """Runs inside a vLLM worker: attention backend class -> the ``kv_cache_dtype`` values it declares it
    supports (empty: it declares no limit)."""
    found: dict[str, list[str]] = {}
    for _, mod in model.named_modules():
        backend = getattr(mod, "attn_backend", None)
        if backend is not None and hasattr(mod, "kv_cache_dtype"):
            found[getattr(backend, "__name__", type(backend).__name__)] = list(
                getattr(backend, "supported_kv_cache_dtypes", None) or [])
    return found


def main_kernel(kernels: dict[str, int]) -> str | None:
    """The kernel most quantized Linear layers use (the last part of ``vllm_linear_kernels``' key)."""
    quantized = {k: n for k, n in kernels.items() if not k.startswith("UnquantizedLinearMethod")}
    pick = quantized or kernels
    return max(pick, key=pick.get).split(" / ")[-1] if pick else None


# vLLM's "Failed to find a kernel ... Reasons: A cannot implement due to: X B cannot implement due to: Y"
_KERNEL_REASON = re.compile(r"(\w+?)(?:LinearKernel|Kernel)? cannot implement due to: (.*?)(?=\s+\w+ cannot implement due to:|$)")


def brief_reason(reason: str) -> str:
    """A "cannot run here" reason for a table cell: vLLM's kernel-selection failure as ``kernel: why`` per
    kernel it tried, anything else as it is (the probe result keeps the whole error)."""
    pairs = _KERNEL_REASON.findall(reason)
    if not pairs:
        return reason
    head = reason.split("Reasons:")[0].split(":")[-1].strip(" .") if "Reasons:" in reason else ""
    return (head + ": " if head else "no kernel: ") + "; ".join(f"{k}: {why.rstrip('. ')}" for k, why in pairs)
