"""The vLLM engine, configured the same way for every measurement (runtime environment).

One place decides the engine settings so that a baseline and a quantized model are always loaded
identically. On CPU: an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), a bounded
KV-cache reservation (``VLLM_CPU_KVCACHE_SPACE``), eager mode, and float32 compute on CPUs without
AVX-512 (bf16 GEMMs fall back to slow kernels there).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ptq_deploy.envs import home
from ptq_deploy.errors import NotRunnableHere, PtqError, UsageError
from ptq_deploy.hardware import HardwareInfo, detect


class EngineConfig(BaseModel):
    model: str
    dtype: str = "auto"
    max_model_len: int = 2048
    kv_cache_dtype: str = "auto"
    enforce_eager: bool | None = None
    seed: int = 0
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kvcache_space_gib: int = 1
    max_num_seqs: int | None = None
    extra: dict[str, Any] = {}


class EngineInfo(BaseModel):
    """What vLLM actually did with the checkpoint."""

    model: str
    quantization: str | None
    dtype: str
    kv_cache_dtype: str
    load_time_s: float  # LLM(...) construction, measured here
    weights_load_s: float | None = None  # vLLM's own "Loading weights took ... seconds"
    model_load_s: float | None = None  # vLLM's own "Model loading took ... seconds"
    compile_time_s: float | None = None  # vLLM's compilation_config.compilation_time (0 in eager mode)
    compile_cache: str = "unknown"  # "not used (eager mode)" | "warm (graphs loaded from cache)" | "cold (compiled)"
    device: str
    settings: EngineConfig


def vllm_version_answer() -> str | None:
    """What ``importlib.metadata.version("vllm")`` should answer where vLLM is installed under another
    distribution name (``vllm-cpu``): its version, ``+cpu`` suffixed as vLLM's CPU detection expects.
    vLLM's own console script and lm-eval's vllm backend both ask that question."""
    import importlib.metadata as md

    for dist in md.packages_distributions().get("vllm", []) or ["vllm", "vllm-cpu"]:
        try:
            v = md.version(dist)
        except md.PackageNotFoundError:
            continue
        return v + ("+cpu" if "cpu" in dist and "+" not in v else "")
    return None


def configure_environment(cfg: EngineConfig | None = None, hw: HardwareInfo | None = None) -> None:
    """Environment variables vLLM reads at import time; call before ``import vllm``."""
    hw = hw or detect()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(home() / "vllm-cache"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if not hw.gpus:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_space_gib if cfg else 1))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def resolve_settings(cfg: EngineConfig, hw: HardwareInfo) -> EngineConfig:
    updates: dict[str, Any] = {}
    if cfg.dtype == "auto" and not hw.gpus and not (hw.cpu.avx512 or hw.cpu.amx):
        updates["dtype"] = "float32"
    if cfg.enforce_eager is None:
        updates["enforce_eager"] = not hw.gpus
    return cfg.model_copy(update=updates)


def preflight(cfg: EngineConfig, hw: HardwareInfo) -> None:
    """Refuse, before spending minutes loading, what this hardware and vLLM build cannot run."""
    from ptq_deploy.checkpoint import scheme_of
    from ptq_deploy.support import kv_cache_support, scheme_support

    path = Path(cfg.model)
    if not path.exists():
        raise UsageError(f"checkpoint not found: {cfg.model}")
    if not (path / "config.json").is_file():
        raise UsageError(f"{cfg.model} is not a Hugging Face checkpoint (no config.json)")
    scheme = scheme_of(path)
    sup = scheme_support(scheme, hw)
    if not sup.runnable:
        raise NotRunnableHere(f"{scheme.name} checkpoint cannot run in vLLM here: {sup.reason}")
    kv = kv_cache_support(cfg.kv_cache_dtype, hw)
    if not kv.runnable:
        raise NotRunnableHere(f"kv_cache_dtype={cfg.kv_cache_dtype} cannot run here: {kv.reason}")


def parse_load_log(text: str) -> dict[str, Any]:
    """The load figures vLLM logs (engine or ``vllm serve`` log text)."""
    import re

    def num(pat):
        m = re.findall(pat, text)
        return float(m[-1].replace(",", "")) if m else None

    kv = num(r"KV cache size: ([\d,]+) tokens")
    return {"weights_load_s": num(r"Loading weights took ([\d.]+) seconds"),
            "model_load_s": num(r"Model loading took [\d.]+ GiB memory and ([\d.]+) seconds"),
            "kv_cache_tokens": int(kv) if kv is not None else None,
            "compile_cache": ("cold (compiled)" if "Compiling a graph" in text else
                              "warm (graphs loaded from cache)" if "Directly load the compiled graph" in text else None)}


# vLLM logs its load timings at INFO from these loggers; ``load`` listens to them whatever the console level
_LOAD_LOGGERS = ("vllm.model_executor.model_loader", "vllm.v1.worker", "vllm.compilation")


class _LoadLog(logging.Handler):
    """Collect vLLM's INFO lines about loading without showing them on the console."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.parsed: dict[str, Any] = {}
        self._saved: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass

    def __enter__(self) -> "_LoadLog":
        try:  # vLLM applies its logging dictConfig once per process, resetting child loggers: do it first
            from vllm.config.logging import LoggingConfig
            from vllm.logger import configure_logging_if_needed

            configure_logging_if_needed(LoggingConfig())
        except ImportError:
            pass
        for name in _LOAD_LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.level))
            lg.setLevel(logging.INFO)
            lg.addHandler(self)
        return self

    def __exit__(self, *exc) -> bool:
        for lg, level in self._saved:
            lg.removeHandler(self)
            lg.setLevel(level)
        self.parsed = parse_load_log("\n".join(self.lines))
        return False


def load(cfg: EngineConfig, hw: HardwareInfo | None = None):
    """Build a ``vllm.LLM``; returns ``(llm, EngineInfo)``."""
    hw = hw or detect()
    preflight(cfg, hw)
    cfg = resolve_settings(cfg, hw)
    configure_environment(cfg, hw)
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len, kv_cache_dtype=cfg.kv_cache_dtype,
        enforce_eager=cfg.enforce_eager, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
        **cfg.extra,
    )
    if hw.gpus:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.max_num_seqs:
        kwargs["max_num_seqs"] = cfg.max_num_seqs
    t0 = time.perf_counter()
    try:
        with _LoadLog() as log:
            llm = LLM(**kwargs)
    except Exception as e:  # engine crash / OOM / unsupported: one line, details in vLLM's log above
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PtqError(f"vLLM failed to load {cfg.model}: {type(e).__name__}: {msg}") from None
    load_s = time.perf_counter() - t0
    mc = llm.llm_engine.model_config
    compile_s = getattr(getattr(llm.llm_engine.vllm_config, "compilation_config", None), "compilation_time", None)
    info = EngineInfo(model=cfg.model, quantization=mc.quantization, dtype=str(mc.dtype).replace("torch.", ""),
                      kv_cache_dtype=cfg.kv_cache_dtype, load_time_s=load_s,
                      weights_load_s=log.parsed["weights_load_s"], model_load_s=log.parsed["model_load_s"],
                      compile_time_s=compile_s,
                      compile_cache="not used (eager mode)" if cfg.enforce_eager else log.parsed["compile_cache"] or "unknown",
                      device=hw.device, settings=cfg)
    return llm, info


def shutdown(llm) -> None:
    """Release the engine (and its worker processes in multiprocess mode)."""
    try:
        engine = llm.llm_engine
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    except Exception:
        pass
    import gc

    del llm
    gc.collect()


class Generation(BaseModel):
    prompt: str
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None


def generate(llm, prompts: list[str], max_tokens: int = 32, logprobs: bool = False) -> list[Generation]:
    """Greedy decoding (temperature 0): deterministic for a given engine and checkpoint."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1 if logprobs else None)
    outs = llm.generate(prompts, params, use_tqdm=False)
    gens = []
    for prompt, o in zip(prompts, outs):
        c = o.outputs[0]
        lps = None
        if logprobs and c.logprobs:
            lps = [step[tid].logprob for step, tid in zip(c.logprobs, c.token_ids)]
        gens.append(Generation(prompt=prompt, text=c.text, token_ids=list(c.token_ids), logprobs=lps))
    return gens
