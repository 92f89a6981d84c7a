"""eval: lm-eval (vLLM backend, HF fallback) on a checkpoint, with recovery vs a baseline.

``run_eval(EvalConfig) -> EvalResult``; see :mod:`ptq_deploy.eval.runner`.
"""

from ptq_deploy.eval.config import BUNDLED_TASKS, DEFAULT_TASKS, HUB_TASKS, EvalConfig
from ptq_deploy.eval.result import EvalResult

__all__ = ["EvalConfig", "EvalResult", "run_eval", "DEFAULT_TASKS", "HUB_TASKS", "BUNDLED_TASKS"]


def run_eval(cfg: EvalConfig, llm=None) -> EvalResult:
    from ptq_deploy.eval.runner import run_eval as _run

    return _run(cfg, llm=llm)
