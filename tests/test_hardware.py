import os
import sys
import types

from ptq_deploy import hardware


def test_cpu_isa_agrees_with_torch():
    """Our /proc/cpuinfo reading against torch's own dispatch capability (an independent probe)."""
    import torch

    cpu = hardware.detect_cpu()
    assert cpu.cores == os.cpu_count() and cpu.model
    cap = torch.backends.cpu.get_cpu_capability()  # DEFAULT | AVX2 | AVX512 | ...
    assert cpu.avx512 == cap.startswith("AVX512")
    assert ("avx2" in cpu.flags) == (cap in ("AVX2",) or cap.startswith("AVX512"))


def test_gpu_list_agrees_with_torch():
    import torch

    gpus = hardware.detect_gpus()
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert hardware.detect().device == ("cuda" if gpus else "cpu")


def test_gpu_detection_through_pynvml(monkeypatch):
    """pynvml cannot run without a GPU, so a fake module stands in for the driver (real path above);
    readings as NVML reports them for an H100 SXM (max memory clock 2619 MHz, 5120-bit bus)."""
    class Mem:
        total, used = 80 * 2**30, 2**30

    class NVMLError(Exception):
        pass

    calls = []
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_MEM=2,
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0), nvmlDeviceGetMemoryInfo=lambda h: Mem(),
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 2619 if kind == 2 else 1980,
        nvmlDeviceGetMemoryBusWidth=lambda h: 5120)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = hardware.detect_gpus()
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert gpus[0].compute_capability == (9, 0) and gpus[0].cc == 9.0
    assert gpus[1].memory_total_bytes == 80 * 2**30
    assert gpus[0].memory_clock_max_mhz == 2619 and gpus[0].memory_bus_width_bits == 5120
    assert round(gpus[0].bandwidth_gbps) == 3352 and gpus[0].bandwidth_source.startswith("NVML")
    assert calls == ["init", "shutdown"]
    hw = hardware.HardwareInfo(cpu=hardware.detect_cpu(), memory_total_bytes=1, gpus=gpus)
    assert hw.device == "cuda" and "H100" in hw.summary() and "3352 GB/s" in hw.summary()

    def unsupported(*a):
        raise NVMLError("Not Supported")

    monkeypatch.setattr(fake, "nvmlDeviceGetMemoryBusWidth", unsupported)  # an older driver
    g = hardware.detect_gpus()[0]
    assert g.memory_bus_width_bits is None and g.bandwidth_gbps is None and g.bandwidth_source is None


def test_fingerprint_follows_what_decides_the_kernels():
    cpu = hardware.detect_cpu()
    hw = hardware.HardwareInfo(cpu=cpu, memory_total_bytes=1)
    assert hw.fingerprint() == hardware.HardwareInfo(cpu=cpu, memory_total_bytes=2).fingerprint()  # memory: no
    amx = cpu.model_copy(update={"flags": [*cpu.flags, "amx_tile"]})
    assert hardware.HardwareInfo(cpu=amx, memory_total_bytes=1).fingerprint() != hw.fingerprint()
    gpu = hardware.GPUInfo(index=0, name="NVIDIA L40", compute_capability=(8, 9), memory_total_bytes=1)
    with_gpu = hw.model_copy(update={"gpus": [gpu]})
    assert with_gpu.fingerprint().startswith("nvidia-l40-cc89-")
    l4 = with_gpu.model_copy(update={"gpus": [gpu.model_copy(update={"name": "NVIDIA L4"})]})
    assert l4.fingerprint() != with_gpu.fingerprint()
