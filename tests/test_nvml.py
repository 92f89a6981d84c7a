"""NVML arithmetic on recorded readings (spec bandwidth, energy, per-process memory) through a fake pynvml,
next to the real path on this machine (no NVML on a CPU host: every answer says so)."""

from __future__ import annotations

import gc
import mmap
import sys
import types

import pytest

from ptq_deploy import hardware
from ptq_deploy.engine import memory as engine_memory
from ptq_deploy.hardware import devices, nvml
from ptq_deploy.perf import energy

# (NVML name, max memory clock MHz, bus width bits) as nvidia-smi -q reports them ("Max Clocks: Memory",
# "Bus Width"), and the datasheet entry (data/devices.yaml) the arithmetic must land on
READINGS = [
    ("NVIDIA H100 80GB HBM3", 2619, 5120, "h100-sxm"),
    ("NVIDIA H100 PCIe", 1593, 5120, "h100-pcie"),
    ("NVIDIA A100-SXM4-40GB", 1215, 5120, "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", 1593, 5120, "a100-80gb"),
    ("NVIDIA L40S", 9001, 384, "l40s"),
    ("NVIDIA L4", 6251, 192, "l4"),
    ("NVIDIA A10", 6251, 384, "a10"),
    ("Tesla T4", 5001, 256, "t4"),
]


@pytest.mark.parametrize("name, clock, bus, device", READINGS)
def test_spec_bandwidth_from_recorded_readings_matches_the_datasheet(name, clock, bus, device):
    gbps = nvml.spec_bandwidth_gbps(clock, bus)
    assert gbps == pytest.approx(devices.get(device).bandwidth_gbps, rel=0.03), name


def test_spec_bandwidth_arithmetic():
    assert nvml.spec_bandwidth_gbps(2619, 5120) == pytest.approx(3352.32)  # 2619e6 x 640 B x 2
    assert nvml.spec_bandwidth_gbps(None, 5120) is None and nvml.spec_bandwidth_gbps(2619, 0) is None


class _NVMLError(Exception):
    pass


def _fake_nvml(energy_mj=None, procs=None, used=(0,)):
    """A pynvml stand-in over recorded readings: per-GPU energy counters (list of mJ values, one per call),
    compute processes (pid, bytes) per GPU, used memory per GPU."""
    counters = {i: iter(v) for i, v in (energy_mj or {}).items()}

    def total_energy(h):
        if h not in counters:
            raise _NVMLError("Not Supported")
        return next(counters[h])

    def running(h):
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in (procs or {}).get(h, [])]

    return types.SimpleNamespace(
        NVMLError=_NVMLError, NVML_CLOCK_MEM=2, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(used), nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=total_energy, nvmlDeviceGetComputeRunningProcesses=running,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * 2**30, used=used[h]))


def test_energy_per_output_token_on_recorded_counters(monkeypatch):
    # two GPUs (tensor parallel 2), three timed phases of 4096 output tokens each
    gpu0 = [1_000_000, 1_700_000, 1_700_000, 2_400_500, 2_400_500, 3_101_000]
    gpu1 = [5_000_000, 5_650_000, 5_650_000, 6_300_000, 6_300_000, 6_951_000]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml({0: [0, *gpu0], 1: [0, *gpu1]}, used=(0, 0)))
    meter = energy.EnergyMeter()
    for _ in range(3):
        with meter.phase():
            pass
    e = meter.result([4096] * 3)
    assert e.source.endswith("GPUs 0,1")
    assert e.joules.n == 3 and e.joules.min == pytest.approx(1350.0)  # 700 + 650 J
    assert e.joules.median == pytest.approx(1350.5) and e.joules.max == pytest.approx(1351.5)  # 700.5 + 651
    assert e.joules_per_output_token.median == pytest.approx(1350.5 / 4096)
    assert e.joules_per_output_token.stdev > 0 and e.joules_per_output_token.unit == "J/token"


def test_energy_without_a_counter_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml({}, used=(0,)))  # e.g. a pre-Volta GPU
    e = energy.EnergyMeter().result([10])
    assert e.joules_per_output_token is None and e.source == nvml.NO_NVML
    assert energy.energy([], [10]).source.startswith("not measured")


def test_engine_memory_from_nvml_per_process(monkeypatch):
    """The engine's own GPU memory: NVML's per-process figures for this process tree, not the device total."""
    me = engine_memory.tree_pids()[0]
    procs = {0: [(me, 3 * 2**30), (999_999, 40 * 2**30)], 1: [(me, 2**30)]}
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(procs=procs, used=(43 * 2**30, 2**30)))
    assert nvml.process_memory([me]) == 4 * 2**30
    base = engine_memory.Baseline(rss_bytes=engine_memory.tree_rss(), gpu_used_bytes=2**30)
    m = engine_memory.measure(base, gpus=True, log_text="Model loading took 2.5 GiB memory and 1.2 seconds\n"
                                                        "Available KV cache memory: 60.25 GiB\n")
    assert m.own_bytes == 4 * 2**30 and m.source == engine_memory.GPU_PROCESS
    assert m.weights_bytes_vllm == int(2.5 * 2**30) and m.kv_cache_bytes_vllm == int(60.25 * 2**30)
    # a container: the driver lists host PIDs, none of them ours -> the device-wide delta, said so
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(procs={0: [(999_999, 5 * 2**30)]}, used=(6 * 2**30,)))
    m = engine_memory.measure(base, gpus=True)
    assert m.own_bytes == 5 * 2**30 and m.source == engine_memory.GPU_DELTA


def test_the_real_path_here():
    """This machine, no fakes: NVML agrees with torch about the GPUs; without one, nothing is measured and
    the engine's memory is the RSS its load adds."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(nvml.devices()) == len(hardware.detect_gpus()) == n
    e = energy.EnergyMeter()
    with e.phase():
        sum(range(100_000))
    res = e.result([1])
    if n == 0:
        assert nvml.energy_mj() is None and nvml.memory_used() is None and nvml.process_memory([1]) is None
        assert res.source == nvml.NO_NVML and res.joules is None
    else:
        assert res.joules is not None and res.joules.min > 0  # the GPU drew energy during the phase
        assert all(g.bandwidth_gbps is None or g.bandwidth_gbps > 100 for g in hardware.detect_gpus())
    # the "load": 64 MiB of fresh anonymous pages, touched. A heap allocation could reuse pages that earlier
    # engines of a long test session freed but the allocator kept resident (the RSS would not move); an mmap
    # cannot. No collection runs between the two readings.
    gc.collect()
    gc.disable()
    block = mmap.mmap(-1, 64 * 2**20)
    try:
        base = engine_memory.baseline(gpus=n > 0)
        for off in range(0, len(block), mmap.PAGESIZE):
            block[off] = 1
        m = engine_memory.measure(base, gpus=False)
    finally:
        gc.enable()
        block.close()
    assert m.source == engine_memory.RSS_DELTA and m.own_bytes >= 60 * 2**20
    assert m.rss_after_load_bytes - m.rss_before_load_bytes == m.own_bytes
