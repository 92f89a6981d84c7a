"""Loading vLLM in this process: refuse what cannot run here, load, read vLLM's load figures and the
engine's own memory, release.

Settings come from ``EngineConfig`` through ``ptq_deploy.engine.args`` (identical for a baseline
and a quantized checkpoint); ``preflight`` asks ``ptq_deploy.probe`` (measured support, static rules
where nothing was measured) about the checkpoint's quantization before any minutes are spent loading.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ptq_deploy import checkpoint, probe
from ptq_deploy.engine import args, heap, memory
from ptq_deploy.engine.config import EngineConfig, EngineInfo, ResolvedEngine
from ptq_deploy.environments import home
from ptq_deploy.errors import NotRunnableHere, PtqError, UsageError, one_line
from ptq_deploy.hardware import HardwareInfo, detect


def preflight(model: str | Path, cfg: EngineConfig, hw: HardwareInfo) -> None:
    """Refuse, before spending minutes loading, what this hardware and vLLM build cannot run."""
    path = Path(model)
    if not path.exists():
        raise UsageError(f"checkpoint not found: {model}")
    q = checkpoint.read(path).quantization
    rules = probe.rules(hw)
    sup = rules.scheme(q)
    if not sup.runnable:
        raise NotRunnableHere(f"{q.name} checkpoint cannot run in vLLM here: {sup.reason} [{sup.source}]")
    kv = rules.kv(cfg.kv_cache_dtype)
    if not kv.runnable:
        raise NotRunnableHere(f"kv_cache_dtype={cfg.kv_cache_dtype} cannot run here: {kv.reason} [{kv.source}]")


def parse_load_log(text: str) -> dict[str, Any]:
    """The load figures vLLM logs (engine or ``vllm serve`` log text)."""
    def num(pat):
        m = re.findall(pat, text)
        return float(m[-1].replace(",", "")) if m else None

    kv = num(r"KV cache size: ([\d,]+) tokens")
    return {"weights_load_s": num(r"Loading weights took ([\d.]+) seconds"),
            "model_load_s": num(r"Model loading took [\d.]+ GiB (?:memory )?and ([\d.]+) seconds"),
            "kv_cache_tokens": int(kv) if kv is not None else None,
            "compile_cache": ("cold (compiled)" if "Compiling a graph" in text else
                              "warm (graphs loaded from cache)" if "Directly load the compiled graph" in text else None)}


# vLLM logs its load timings, memory and KV-cache size at INFO from these loggers; ``load`` listens to them
# whatever the console level (in-process engine; a multiprocess engine logs in its own process)
_LOAD_LOGGERS = ("vllm.model_executor.model_loader", "vllm.v1.worker", "vllm.v1.core", "vllm.compilation")


class _LoadLog(logging.Handler):
    """Collect vLLM's INFO lines about loading without showing them on the console."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.parsed: dict[str, Any] = {}
        self.text = ""
        self._saved: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass

    def __enter__(self) -> "_LoadLog":
        _configure_vllm_logging()
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
        self.text = "\n".join(self.lines)
        self.parsed = parse_load_log(self.text)
        return False


class LoadFailed(PtqError):
    """vLLM raised while building the engine (``error``: the exception, on one line)."""

    def __init__(self, model: str | Path, error: str, log: Path | None = None):
        super().__init__(f"vLLM failed to load {model}: {error}" + (f" (vLLM's log: {log})" if log else ""))
        self.error = error


_VLLM_LOG: Path | None = None


def keep_vllm_log() -> Path:
    """vLLM's INFO and WARNING lines of this process, kept in ``$PTQ_DEPLOY_HOME/logs/vllm-<time>-<pid>.log``
    while its console handler shows only what ``VLLM_LOGGING_LEVEL`` asks for (errors, by default)."""
    global _VLLM_LOG
    if _VLLM_LOG is None:
        _configure_vllm_logging()
        _VLLM_LOG = home() / "logs" / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        _VLLM_LOG.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(_VLLM_LOG)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("vllm")
        if root.getEffectiveLevel() > logging.INFO:  # its console handler keeps its own level
            root.setLevel(logging.INFO)
        root.addHandler(handler)
    return _VLLM_LOG


def _configure_vllm_logging() -> None:
    """vLLM applies its logging dictConfig once per process, resetting child loggers: have it done first."""
    try:
        from vllm.config.logging import LoggingConfig
        from vllm.logger import configure_logging_if_needed

        configure_logging_if_needed(LoggingConfig())
    except ImportError:
        pass


def prepare(model: str | Path, cfg: EngineConfig, hw: HardwareInfo, check: bool = True) -> ResolvedEngine:
    """What every engine of ``model`` needs first: ``preflight`` (one line, unless ``check=False``), the resolved
    settings, and the process environment vLLM reads for them."""
    if check:
        preflight(model, cfg, hw)
    resolved = args.resolve(model, cfg, hw)
    args.apply_environment(resolved)
    return resolved


def load(model: str | Path, cfg: EngineConfig, hw: HardwareInfo | None = None, check: bool = True):
    """Build a ``vllm.LLM`` for ``model``; returns ``(llm, EngineInfo)``. ``check=False`` skips ``preflight``
    (the probe asks vLLM itself)."""
    hw = hw or detect()
    resolved = prepare(model, cfg, hw, check)
    from vllm import LLM  # heavy: imported once the environment is set

    log_file = keep_vllm_log()
    base = memory.baseline(bool(hw.gpus))
    host_heap = heap.engine_heap(bool(hw.gpus))
    t0 = time.perf_counter()
    try:
        with _LoadLog() as log:
            llm = LLM(**args.llm_kwargs(resolved))
    except Exception as e:  # engine crash / OOM / unsupported: one line, details in vLLM's log above
        heap.release()
        raise LoadFailed(model, one_line(e, limit=1000), log_file) from None
    info = engine_info(llm, resolved, time.perf_counter() - t0, log.parsed, hw)
    info.memory = memory.measure(base, bool(hw.gpus), log.text)
    info.host_heap = host_heap
    return llm, info


def engine_info(llm, resolved: ResolvedEngine, load_s: float, parsed: dict[str, Any], hw: HardwareInfo) -> EngineInfo:
    mc = llm.llm_engine.model_config
    cache = getattr(getattr(llm.llm_engine, "vllm_config", None), "cache_config", None)
    compile_s = getattr(getattr(llm.llm_engine.vllm_config, "compilation_config", None), "compilation_time", None)
    return EngineInfo(model=resolved.model, quantization=mc.quantization, dtype=str(mc.dtype).replace("torch.", ""),
                      kv_cache_dtype=str(getattr(cache, "cache_dtype", resolved.kv_cache_dtype)), load_time_s=load_s,
                      weights_load_s=parsed.get("weights_load_s"), model_load_s=parsed.get("model_load_s"),
                      compile_time_s=compile_s,
                      compile_cache="not used (eager mode)" if resolved.enforce_eager
                      else parsed.get("compile_cache") or "unknown",
                      device=hw.device, settings=resolved)


def shutdown(llm) -> None:
    """Release the engine (and its worker processes in multiprocess mode)."""
    try:
        engine = llm.llm_engine
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    except Exception:
        pass
    del llm
    gc.collect()
    heap.release()


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
