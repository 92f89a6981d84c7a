"""Decode roofline at batch 1: bytes read per output token, achieved bandwidth, MBU.

At batch 1 every decode step reads every weight once (plus the KV cache of the context), so
``bytes/token / time/token`` is the memory bandwidth the engine achieved. Against the device's
peak (``support.KNOWN_GPUS`` for GPUs; a measured memory-copy bandwidth on CPU) that is the
memory-bandwidth utilisation (MBU). Weights are counted as vLLM holds them: quantized tensors
(int8/fp8/packed int4) at their stored size, floating-point tensors at the compute dtype (vLLM
upcasts a bf16 checkpoint to fp32 on AVX2 CPUs). The input-embedding table is not read whole at
decode (one row per token) and is left out, unless it is tied to the LM head.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy.checkpoint import read as checkpoint_facts
from ptq_deploy.stats import Summary

FLOAT = {"F64", "F32", "F16", "BF16"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1, "int8": 1}  # vLLM compute / KV-cache dtype names


class WeightBytes(BaseModel):
    checkpoint_bytes: int  # tensor bytes as stored on disk
    decode_bytes: int  # bytes read per decode step (see module doc)
    embedding_excluded_bytes: int
    tied_embeddings: bool
    compute_dtype: str


def weight_bytes(checkpoint: Path, compute_dtype: str) -> WeightBytes:
    ck = checkpoint_facts(checkpoint)
    tied = bool(ck.config.get("tie_word_embeddings", False))
    has_head = any(n.endswith("lm_head.weight") for n in ck.tensors)
    cbytes = DTYPE_BYTES.get(compute_dtype, 2)
    stored = decode = excluded = 0
    for name, t in ck.tensors.items():
        sb = t.nbytes
        stored += sb
        b = t.numel * cbytes if t.dtype in FLOAT else sb
        if "embed_tokens" in name and not (tied and not has_head):
            excluded += b
            continue
        decode += b
    return WeightBytes(checkpoint_bytes=stored, decode_bytes=decode, embedding_excluded_bytes=excluded,
                       tied_embeddings=tied and not has_head, compute_dtype=compute_dtype)


def kv_bytes_per_token(checkpoint: Path, kv_dtype: str, compute_dtype: str) -> int:
    """K and V bytes one token position occupies in the cache, all layers."""
    cfg = checkpoint_facts(checkpoint).config
    cfg = cfg.get("text_config", cfg)
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    b = DTYPE_BYTES.get(compute_dtype if kv_dtype == "auto" else kv_dtype, 2)
    return 2 * layers * kv_heads * head_dim * b


class PeakBandwidth(BaseModel):
    source: str  # "table:<gpu>" or "measured: torch copy"
    gbps: float
    measured: Summary | None = None


def measure_copy_bandwidth(mib: int = 256, repeats: int = 7) -> Summary:
    """Memory-copy bandwidth (GB/s, read + write counted) of this machine, with torch's threads."""
    try:
        import torch

        src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        copy = lambda: dst.copy_(src)  # noqa: E731
        nbytes = src.numel() * 4
    except ImportError:  # pragma: no cover - torch is in the runtime env
        import numpy as np

        src = np.ones(mib * 2**20 // 4, dtype=np.float32)
        dst = np.empty_like(src)
        copy = lambda: np.copyto(dst, src)  # noqa: E731
        nbytes = src.nbytes
    copy()  # fault the pages in
    vals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy()
        vals.append(2 * nbytes / (time.perf_counter() - t0) / 1e9)
    return Summary.of(vals, "GB/s")


def peak_bandwidth(hw) -> PeakBandwidth:
    from ptq_deploy.support import KNOWN_GPUS

    if hw.gpus:
        name = hw.gpus[0].name.lower().replace(" ", "")
        for key, (_cc, gbps) in sorted(KNOWN_GPUS.items(), key=lambda kv: -len(kv[0])):
            if key in name:
                return PeakBandwidth(source=f"table:{key}", gbps=gbps)
        return PeakBandwidth(source=f"unknown GPU {hw.gpus[0].name}", gbps=float("nan"))
    s = measure_copy_bandwidth()
    return PeakBandwidth(source="measured: torch tensor copy (best of n)", gbps=s.max, measured=s)


class Roofline(BaseModel):
    batch: int = 1
    weights: WeightBytes
    kv_bytes_per_token_position: int
    mean_context_tokens: float  # average context a decode step attends to
    bytes_per_output_token: float
    decode_time_per_token: Summary  # s
    achieved_gbps: Summary
    peak: PeakBandwidth
    mbu: Summary  # achieved / peak
    note: str = ("bytes/token = weights read per step (as held by vLLM, embedding table excluded unless tied) "
                 "+ KV cache of the mean context; decode time/token from batch-1 (e2e - prefill)/(output-1)")


def compute(checkpoint: Path, compute_dtype: str, kv_dtype: str, tpot_s: list[float], mean_prompt_len: float,
            output_len: int, hw) -> Roofline:
    w = weight_bytes(checkpoint, compute_dtype)
    kv = kv_bytes_per_token(checkpoint, kv_dtype, compute_dtype)
    ctx = mean_prompt_len + output_len / 2
    per_tok = w.decode_bytes + kv * ctx
    gbps = [per_tok / t / 1e9 for t in tpot_s if t > 0]
    peak = peak_bandwidth(hw)
    return Roofline(weights=w, kv_bytes_per_token_position=kv, mean_context_tokens=ctx, bytes_per_output_token=per_tok,
                    decode_time_per_token=Summary.of(tpot_s, "s"), achieved_gbps=Summary.of(gbps, "GB/s"), peak=peak,
                    mbu=Summary.of([g / peak.gbps for g in gbps], "fraction"))
