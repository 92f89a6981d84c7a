"""The vLLM engine, configured the same way for every measurement (runtime environment).

``EngineConfig`` (``config``) holds the settings; ``args`` is the one module that turns them into
vLLM's arguments; ``load`` builds an in-process ``vllm.LLM`` after a ``preflight`` check.
"""

from ptq_deploy.engine.args import (
                                    apply_environment,
                                    check_parallel,
                                    llm_kwargs,
                                    lm_eval_model_args,
                                    lm_eval_server_args,
                                    resolve,
                                    serve_flags,
                                    vllm_version_shim,
)
from ptq_deploy.engine.config import EngineConfig, EngineInfo, ResolvedEngine
from ptq_deploy.engine.load import (Generation, LoadFailed, generate, load, parse_load_log, preflight, prepare,
                                    shutdown)

__all__ = ["EngineConfig", "EngineInfo", "Generation", "LoadFailed", "ResolvedEngine", "apply_environment",
           "check_parallel", "generate", "lm_eval_model_args", "lm_eval_server_args", "llm_kwargs", "load",
           "parse_load_log", "preflight", "prepare", "resolve", "serve_flags", "shutdown", "vllm_version_shim"]
