"""engine: the load figures vLLM logs, as ptq-deploy reads them (log lines in vLLM 0.32's wording)."""

from ptq_deploy.engine import parse_load_log

SERVER_LOG_COLD = """\
(EngineCore pid=123) INFO 11-22 23:23:48 [default_loader.py:502] Loading weights took 0.84 seconds
(EngineCore pid=123) INFO 11-22 23:23:48 [gpu_model_runner.py:5150] Model loading took 0.27 GiB memory and 1.203 seconds
(EngineCore pid=123) INFO 11-22 23:23:55 [backends.py:399] Compiling a graph for compile range (1, 8192) takes 6.10 s
(EngineCore pid=123) INFO 11-22 23:23:57 [kv_cache_utils.py:1300] GPU KV cache size: 2,081,536 tokens
"""


def test_parse_load_log_cold_compile():
    got = parse_load_log(SERVER_LOG_COLD)
    assert got == {"weights_load_s": 0.84, "model_load_s": 1.203, "kv_cache_tokens": 2_081_536,
                   "compile_cache": "cold (compiled)"}


def test_parse_load_log_warm_and_last_figure_wins():
    log = ("Loading weights took 9.00 seconds\nLoading weights took 0.02 seconds\n"
           "Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 0.512 s\n")
    got = parse_load_log(log)
    assert got["weights_load_s"] == 0.02 and got["compile_cache"] == "warm (graphs loaded from cache)"
    assert got["model_load_s"] is None and got["kv_cache_tokens"] is None


def test_parse_load_log_empty():
    assert set(parse_load_log("").values()) == {None}


def test_parse_load_log_vllm_0_20_v2_runner_wording():
    """vLLM 0.20's opt-in V2 model runner logs the model load without the word "memory"."""
    assert parse_load_log("Model loading took 15.02 GiB and 7.250000 seconds")["model_load_s"] == 7.25


# ---------------------------------------------------------------- parallelism: one road to vLLM, refused where it cannot run
def _hw(gpus: int):
    from ptq_deploy import hardware

    gpu = hardware.GPUInfo(index=0, name="NVIDIA H100", compute_capability=(9, 0), memory_total_bytes=80 * 2**30)
    return hardware.HardwareInfo(cpu=hardware.detect_cpu(), memory_total_bytes=1,
                                 gpus=[gpu.model_copy(update={"index": i}) for i in range(gpus)])


def test_parallel_sizes_reach_llm_serve_and_lm_eval(tmp_path):
    from ptq_deploy.engine import (EngineConfig, lm_eval_model_args, lm_eval_server_args, llm_kwargs, resolve,
                                   serve_flags)

    cfg = EngineConfig(tensor_parallel_size=2, pipeline_parallel_size=2, data_parallel_size=2, max_model_len=64)
    r = resolve(tmp_path, cfg, _hw(8))
    kw = llm_kwargs(r)
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"], kw["data_parallel_size"]) == (2, 2, 2)
    flags = serve_flags(r)
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size"):
        assert flags[flags.index(flag) + 1] == "2"
    lm = lm_eval_model_args(r)  # lm-eval's own Ray data parallelism is never asked for
    assert lm["pipeline_parallel_size"] == 2 and "data_parallel_size" not in lm
    srv = lm_eval_server_args(r, "http://127.0.0.1:8000", str(tmp_path))
    assert srv["base_url"] == "http://127.0.0.1:8000/v1/completions" and srv["max_length"] == 63
    assert "pipeline_parallel_size" not in llm_kwargs(resolve(tmp_path, EngineConfig(max_model_len=64), _hw(1)))


def test_parallelism_a_machine_cannot_give_is_one_line(tmp_path, monkeypatch):
    import pytest

    from ptq_deploy.engine import EngineConfig, resolve
    from ptq_deploy.errors import UsageError

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    with pytest.raises(UsageError, match="needs 4 GPUs; this machine has 2"):
        resolve(tmp_path, EngineConfig(tensor_parallel_size=2, pipeline_parallel_size=2, max_model_len=64), _hw(2))
    with pytest.raises(UsageError, match="data_parallel_size 2 x 2 GPUs per engine needs 4 GPUs"):
        resolve(tmp_path, EngineConfig(tensor_parallel_size=2, data_parallel_size=2, max_model_len=64), _hw(2))
    with pytest.raises(UsageError, match="on a CPU host"):
        resolve(tmp_path, EngineConfig(pipeline_parallel_size=2, max_model_len=64), _hw(0))


HEAP_PROBE = """
import ctypes, os
from ptq_deploy.engine import heap

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def kept_after_free():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    before = rss()
    libc.free(p)
    return size - (before - rss())

default = kept_after_free()
set_ = heap.engine_heap(gpus=False)
kept = kept_after_free()
held = rss()
heap.release()
print(default, set_ is not None, kept, held - rss(), heap.current() is None, heap.engine_heap(gpus=True) is None)
"""


def test_engine_heap_keeps_freed_memory_until_released():
    """glibc returns a freed 256 MiB block at once by default; under ``engine_heap`` it stays in the heap
    for the next step's tensors, until ``release`` trims it (RSS from /proc/self/statm, in a fresh
    process: a long-lived one's heap may already hold a hole that size)."""
    import subprocess
    import sys

    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    default, was_set, kept, trimmed, cleared, gpu_untouched = out.stdout.split()
    size = 256 << 20
    assert int(default) < size // 4 and was_set == "True"
    assert int(kept) > size * 3 // 4 and int(trimmed) > size * 3 // 4
    assert cleared == "True" and gpu_untouched == "True"  # a GPU host keeps glibc's defaults
