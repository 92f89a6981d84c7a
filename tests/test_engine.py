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
