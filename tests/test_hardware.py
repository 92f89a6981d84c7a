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
    """pynvml cannot run without a GPU, so a fake module stands in for the driver (real path above)."""
    class Mem:
        total, used = 80 * 2**30, 2**30

    calls = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0), nvmlDeviceGetMemoryInfo=lambda h: Mem())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = hardware.detect_gpus()
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert gpus[0].compute_capability == (9, 0) and gpus[0].cc == 9.0
    assert gpus[1].memory_total_bytes == 80 * 2**30
    assert calls == ["init", "shutdown"]
    hw = hardware.HardwareInfo(cpu=hardware.detect_cpu(), memory_total_bytes=1, gpus=gpus)
    assert hw.device == "cuda" and "H100" in hw.summary()
