import sys
import types

from ptq_deploy import hardware


def test_cpu_detection_reads_real_flags():
    cpu = hardware.detect_cpu()
    assert cpu.cores >= 1 and cpu.model
    assert set(cpu.flags) <= hardware._INTERESTING_FLAGS
    assert cpu.isa in ("AMX", "AVX-512", "AVX2", cpu.arch)


def test_no_gpu_here_means_empty_list():
    assert hardware.detect_gpus() == []  # no NVIDIA driver on CPU machines
    assert hardware.detect().device == "cpu"


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
