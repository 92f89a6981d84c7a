"""Decode roofline at batch 1: bytes read per output token, achieved bandwidth, MBU.

At batch 1 every decode step reads every weight once (plus the KV cache of the context), so
``bytes/token / time/token`` is the memory bandwidth the engine achieved. Against the device's
peak that is the memory-bandwidth utilisation (MBU): on a GPU against its spec peak from NVML (max
memory clock x bus width x 2) and against a measured device-to-device copy; on a CPU against a
measured memory copy. Weights are counted as vLLM holds them: quantized tensors
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
    source: str  # "NVML: max memory clock x bus width x 2 (<gpu>)" | "measured: ... copy (best of n)"
    gbps: float
    measured: Summary | None = None


def measure_copy_bandwidth(device: str = "cpu", mib: int = 256, repeats: int = 7) -> Summary:
    """Memory-copy bandwidth (GB/s, read + write counted) of ``device`` (cpu: torch's threads; cuda: device to
    device, synchronised around each copy)."""
    import torch  # heavy; the engine has loaded it already

    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dst.copy_(src)  # fault the pages in / warm up
    sync()
    vals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        vals.append(2 * src.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return Summary.of(vals, "GB/s")


def measured_peak(hw) -> PeakBandwidth:
    """The best of n memory copies: device to device on the first GPU, else in host memory."""
    gpu = bool(hw.gpus)
    s = measure_copy_bandwidth("cuda:0" if gpu else "cpu")
    what = "device-to-device tensor copy on GPU 0" if gpu else "torch tensor copy in host memory"
    return PeakBandwidth(source=f"measured: {what} (best of n)", gbps=s.max, measured=s)


def peaks(hw) -> tuple[PeakBandwidth, PeakBandwidth | None]:
    """(the peak MBU is reported against, a second one): on a GPU its NVML spec peak and a measured copy (the
    measured one first where NVML gives no spec); on a CPU a measured copy alone."""
    measured = measured_peak(hw)
    g = hw.gpus[0] if hw.gpus else None
    if g is None or not g.bandwidth_gbps:
        return measured, None
    return PeakBandwidth(source=f"{g.bandwidth_source} ({g.name})", gbps=g.bandwidth_gbps), measured


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
    second_peak: PeakBandwidth | None = None  # GPU: the measured copy next to the spec peak
    mbu_vs_second: Summary | None = None
    # batch-1 requests whose e2e minus the separately timed prefill of the same prompt was not positive (the
    # timing noise of a busy machine exceeded the whole decode): no bandwidth is computed from them
    decode_not_positive: int = 0
    note: str = ("bytes/token = weights read per step (as held by vLLM, embedding table excluded unless tied) "
                 "+ KV cache of the mean context; decode time/token from batch-1 (e2e - prefill)/(output-1)")


def compute(checkpoint: Path, compute_dtype: str, kv_dtype: str, tpot_s: list[float], mean_prompt_len: float,
            output_len: int, hw) -> Roofline:
    w = weight_bytes(checkpoint, compute_dtype)
    kv = kv_bytes_per_token(checkpoint, kv_dtype, compute_dtype)
    ctx = mean_prompt_len + output_len / 2
    per_tok = w.decode_bytes + kv * ctx
    gbps = [per_tok / t / 1e9 for t in tpot_s if t > 0]
    peak, second = peaks(hw)
    return Roofline(weights=w, kv_bytes_per_token_position=kv, mean_context_tokens=ctx, bytes_per_output_token=per_tok,
                    decode_time_per_token=Summary.of(tpot_s, "s"), achieved_gbps=Summary.of(gbps, "GB/s"), peak=peak,
                    mbu=Summary.of([g / peak.gbps for g in gbps], "fraction"), second_peak=second,
                    mbu_vs_second=Summary.of([g / second.gbps for g in gbps], "fraction") if second else None,
                    decode_not_positive=sum(t <= 0 for t in tpot_s))
