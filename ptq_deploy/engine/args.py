"""The one place engine settings become vLLM's arguments: ``LLM(...)`` kwargs, ``vllm serve`` flags,
lm-eval ``model_args`` and the environment variables vLLM reads at import time.

``resolve`` decides what "auto" means on this machine (float32 compute and eager mode on CPUs
without AVX-512, the model's length capped at 2048); everything else derives from ``llm_kwargs``,
so a setting cannot reach vLLM by two roads.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptq_deploy.engine import emulation
from ptq_deploy.engine.config import MAX_MODEL_LEN_CAP, EngineConfig, ResolvedEngine
from ptq_deploy.environments import home
from ptq_deploy.errors import PtqError, UsageError
from ptq_deploy.hardware import HardwareInfo


def default_max_model_len(model: str) -> int:
    """The model's max position embeddings, capped at ``MAX_MODEL_LEN_CAP`` (hub ids: the cap)."""
    from ptq_deploy import checkpoint

    if not (Path(model) / "config.json").is_file():
        return MAX_MODEL_LEN_CAP
    return min(checkpoint.read(model).max_position or MAX_MODEL_LEN_CAP, MAX_MODEL_LEN_CAP)


def check_parallel(cfg: EngineConfig, hw: HardwareInfo) -> None:
    """Refuse, in one line, parallelism this machine cannot give one engine."""
    workers = cfg.gpus_per_engine * cfg.data_parallel_size
    if not hw.gpus and workers > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        raise UsageError(f"tensor x pipeline x data parallel size = {workers} on a CPU host: vLLM's CPU workers "
                         "need one NUMA node each, or VLLM_CPU_OMP_THREADS_BIND set (e.g. '0-7|8-15'); use 1 here")
    if hw.gpus and cfg.gpus_per_engine > len(hw.gpus):
        raise UsageError(f"tensor_parallel_size x pipeline_parallel_size = {cfg.gpus_per_engine} needs "
                         f"{cfg.gpus_per_engine} GPUs; this machine has {len(hw.gpus)}")
    dp_gpus = cfg.gpus_per_engine * cfg.data_parallel_size
    if hw.gpus and dp_gpus > len(hw.gpus):
        raise UsageError(f"data_parallel_size {cfg.data_parallel_size} x {cfg.gpus_per_engine} GPUs per engine "
                         f"needs {dp_gpus} GPUs; this machine has {len(hw.gpus)}")


def resolve(model: str | Path, cfg: EngineConfig, hw: HardwareInfo) -> ResolvedEngine:
    check_parallel(cfg, hw)
    data = cfg.model_dump()
    if cfg.dtype == "auto" and not hw.gpus and not (hw.cpu.avx512 or hw.cpu.amx):
        data["dtype"] = "float32"  # bf16 GEMMs fall back to slow torch kernels on AVX2
    if cfg.enforce_eager is None:
        data["enforce_eager"] = not hw.gpus
    if cfg.max_model_len is None:
        data["max_model_len"] = default_max_model_len(str(model))
    spec = emulation.spec_file(model)
    if spec is not None:  # vLLM quantizes the dense copy's activations (eager: the plugin wraps the Linear method)
        if not emulation.installed():
            raise PtqError(f"{model} needs its activations quantized in vLLM, but the ptq-deploy vLLM plugin is not "
                           "registered in this environment: run `make setup`")
        data["enforce_eager"], data["emulated_activations"] = True, str(spec.resolve())
    return ResolvedEngine(model=str(model), gpus=bool(hw.gpus), **data)


def llm_kwargs(r: ResolvedEngine) -> dict[str, Any]:
    """``vllm.LLM(**kwargs)``."""
    kw: dict[str, Any] = dict(model=r.model, dtype=r.dtype, max_model_len=r.max_model_len,
                              kv_cache_dtype=r.kv_cache_dtype, enforce_eager=r.enforce_eager, seed=r.seed,
                              tensor_parallel_size=r.tensor_parallel_size)
    if r.pipeline_parallel_size > 1:
        kw["pipeline_parallel_size"] = r.pipeline_parallel_size
    if r.data_parallel_size > 1:
        kw["data_parallel_size"] = r.data_parallel_size
    if r.gpus:
        kw["gpu_memory_utilization"] = r.gpu_memory_utilization
    if r.max_num_seqs:
        kw["max_num_seqs"] = r.max_num_seqs
    return {**kw, **r.extra}


def serve_flags(r: ResolvedEngine) -> list[str]:
    """``vllm serve MODEL`` flags equal to ``llm_kwargs`` (the model is the positional argument)."""
    flags: list[str] = []
    for k, v in llm_kwargs(r).items():
        if k == "model":
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            flags.append(flag)
        elif v is False:
            if k != "enforce_eager":  # vLLM's default; it has no --no- form in every release
                flags.append("--no-" + k.replace("_", "-"))
        else:
            flags += [flag, v if isinstance(v, str) else json.dumps(v)]
    return flags


def lm_eval_model_args(r: ResolvedEngine, **lm_eval_options: Any) -> dict[str, Any]:
    """lm-eval's ``vllm`` model args: its own options plus every engine kwarg (passed through to LLM).
    Data parallelism is not among them: lm-eval's own Ray data-parallel mode hangs (lm-eval #1734, #2379,
    #2904); with ``data_parallel_size > 1`` eval scores a ``vllm serve`` instead (``lm_eval_server_args``)."""
    kw = llm_kwargs(r)
    kw.pop("data_parallel_size", None)
    return {"pretrained": kw.pop("model"), **kw, **lm_eval_options}


def lm_eval_server_args(r: ResolvedEngine, base_url: str, tokenizer: str, **lm_eval_options: Any) -> dict[str, Any]:
    """lm-eval's ``local-completions`` model args for a ``vllm serve`` of ``r`` (``serve_flags``) at ``base_url``.
    ``max_length`` is one less than the engine's: lm-eval's API models cut perplexity windows at max_length - 1,
    its ``vllm`` model at max_length - 2; so both score the same windows (the same perplexities)."""
    return {"model": r.model, "base_url": base_url.rstrip("/") + "/v1/completions", "tokenizer": tokenizer,
            "tokenizer_backend": "huggingface", "max_length": r.max_model_len - 1, "seed": r.seed,
            "num_concurrent": r.data_parallel_size * 4, "max_retries": 1, **lm_eval_options}


def environment(r: ResolvedEngine, in_process: bool) -> dict[str, str]:
    """Variables vLLM reads at import time. ``in_process``: this interpreter's engine (not a server)."""
    env = {"VLLM_CACHE_ROOT": str(home() / "vllm-cache")}
    if r.emulated_activations:
        env[emulation.ENV] = r.emulated_activations
    if not r.gpus:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(r.cpu_kvcache_space_gib)
        env["VLLM_TARGET_DEVICE"] = "cpu"
        if in_process:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # errors raised here, load in seconds
    return env


def apply_environment(r: ResolvedEngine) -> None:
    """Set the in-process engine's variables (what the user already set wins); before ``import vllm``."""
    # the console gets vLLM's errors, on stderr (stdout carries results, --json); its INFO and WARNING lines go
    # to a log file (``load.keep_vllm_log``)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    env = environment(r, in_process=True)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    # per model, not a user's setting: this engine's spec, or none
    os.environ.pop(emulation.ENV, None)
    if emulation.ENV in env:
        os.environ[emulation.ENV] = env[emulation.ENV]
        emulation.register()  # an in-process engine: as vLLM's plugin loader would (it runs it once per process)


def vllm_version_answer() -> str | None:
    """What ``importlib.metadata.version("vllm")`` should answer where vLLM is installed under another
    distribution name (``vllm-cpu``): its version, ``+cpu`` suffixed as vLLM's CPU detection expects."""
    for dist in md.packages_distributions().get("vllm", []) or ["vllm", "vllm-cpu"]:
        try:
            v = md.version(dist)
        except md.PackageNotFoundError:
            continue
        return v + ("+cpu" if "cpu" in dist and "+" not in v else "")
    return None


@contextmanager
def vllm_version_shim(lm_eval: bool = False):
    """Answer ``importlib.metadata.version("vllm")`` for a ``vllm-cpu`` distribution while inside.

    vLLM's console script and lm-eval's vllm backend both ask; scoped to this process and restored
    on exit (with ``lm_eval``, also in lm-eval's vllm module, which binds ``version`` at import);
    a no-op where the distribution is named ``vllm``. Nothing in site-packages is modified.
    """
    real = md.version
    try:
        real("vllm")
        yield
        return
    except md.PackageNotFoundError:
        pass
    answer = vllm_version_answer()
    if answer is None:
        raise UsageError("vLLM is not installed in this environment (vllm or vllm-cpu); or use --backend hf")

    def version(name: str) -> str:
        return answer if name.lower().replace("_", "-") == "vllm" else real(name)

    md.version = version
    lm_vllm = None
    if lm_eval:
        import lm_eval.models.vllm_causallms as lm_vllm  # heavy; binds ``version`` at its first import

        lm_vllm.version = version
    try:
        yield
    finally:
        md.version = real
        if lm_vllm is not None:
            lm_vllm.version = real
