"""``run_perf(PerfConfig) -> PerfResult``: preflight, offline benchmarks on one in-process engine,
the serving sweep on ``vllm serve``, the roofline, one JSON in ``perf_results/``.

Pass an already-loaded ``llm`` (with its ``EngineInfo``) to measure the engine another command
(e.g. ``eval``) loaded; it is then not shut down here.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from pathlib import Path

from ptq_deploy import engine
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.perf import offline, roofline, serving, workload
from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.memory import MemoryStats, PeakSampler, gpu_used, tree_rss
from ptq_deploy.perf.result import LoadStats, PerfResult
from ptq_deploy.provenance import collect
from ptq_deploy.results import atomic_write_json
from ptq_deploy.stats import Summary


def labels(checkpoint: Path) -> tuple[str, str]:
    """(model name, scheme name) for the result file name."""
    from ptq_deploy.checkpoint import read_config, scheme_of
    from ptq_deploy.compress import read_metadata

    meta = None
    try:
        meta = read_metadata(checkpoint)
    except ValueError:
        pass
    if meta and meta.get("scheme"):
        src = (meta.get("source") or {}).get("path") or checkpoint.name
        return Path(src).name, str(meta["scheme"])
    scheme = scheme_of(checkpoint).name
    if scheme == "dense":
        scheme = str(read_config(checkpoint).get("torch_dtype") or read_config(checkpoint).get("dtype") or "dense")
        scheme = {"bfloat16": "BF16", "float16": "FP16", "float32": "FP32"}.get(scheme, scheme.upper())
    return checkpoint.name, scheme


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "model"


def result_path(out_dir: Path, model: str, scheme: str, when: _dt.datetime) -> Path:
    return Path(out_dir) / f"{_safe(model)}_{_safe(scheme)}_{when.strftime('%Y%m%dT%H%M%S')}.json"


def _check(cfg: PerfConfig, max_model_len: int):
    need = cfg.input_len + cfg.output_len
    if need > max_model_len:
        raise UsageError(f"--input-len {cfg.input_len} + --output-len {cfg.output_len} = {need} tokens exceeds "
                         f"--max-model-len {max_model_len}")
    if not (cfg.offline or cfg.serving):
        raise UsageError("nothing to run: both offline and serving are off")


def run_perf(cfg: PerfConfig, llm=None, info: engine.EngineInfo | None = None, hw: HardwareInfo | None = None,
             progress=None) -> PerfResult:
    say = progress or (lambda msg: None)
    hw = hw or detect()
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    ecfg = cfg.engine_config()
    engine.preflight(ecfg, hw)  # one line, before anything is loaded
    ckpt = Path(cfg.checkpoint)
    resolved = engine.resolve_settings(ecfg, hw)
    if info is not None:
        resolved = info.settings
    _check(cfg, resolved.max_model_len)
    engine.configure_environment(resolved, hw)

    tokenizer = workload.load_tokenizer(str(ckpt))
    reqs = workload.build(tokenizer, cfg.dataset, cfg.num_prompts, cfg.input_len, cfg.output_len, cfg.seed)
    winfo = workload.info(reqs, cfg.dataset, cfg.seed, cfg.input_len, cfg.output_len)
    model_name, scheme = labels(ckpt)

    load = memory = latency = throughput = roof = serve = None
    quant = info.quantization if info else None
    own = llm is None
    if cfg.offline:
        if own:
            say(f"loading {ckpt} in vLLM")
            llm, info = engine.load(ecfg, hw)
        quant = info.quantization
        try:
            rss0, gpu0 = tree_rss(), gpu_used() if hw.gpus else None
            blocks, bsize = offline.kv_capacity(llm)
            kv_tok = roofline.kv_bytes_per_token(ckpt, resolved.kv_cache_dtype, info.dtype)
            w = roofline.weight_bytes(ckpt, info.dtype)
            with PeakSampler(gpu=bool(hw.gpus)) as mem:
                say(f"latency: {cfg.n_latency_prompts} prompts at batch 1 and a batch of {len(reqs)}, "
                    f"{cfg.iterations} iterations after {cfg.warmup} warm-up")
                latency, decode_s = offline.measure_latency(llm, reqs[:cfg.n_latency_prompts], reqs, cfg.iterations, cfg.warmup)
                say(f"throughput: {len(reqs)} requests x {cfg.iterations} iterations")
                throughput = offline.measure_throughput(llm, reqs, cfg.iterations, cfg.warmup)
            memory = MemoryStats(process="this process (in-process engine) and its children", rss_after_load_bytes=rss0,
                                 peak_rss_bytes=mem.peak_rss, rss_samples=mem.n, gpu_after_load_bytes=gpu0,
                                 peak_gpu_bytes=mem.peak_gpu, kv_cache_blocks=blocks, kv_cache_block_size=bsize,
                                 kv_cache_tokens=blocks * bsize if blocks and bsize else None,
                                 kv_cache_bytes=blocks * bsize * kv_tok if blocks and bsize else None,
                                 kv_bytes_per_token=kv_tok, weight_bytes_checkpoint=w.checkpoint_bytes)
            load = LoadStats(engine_init_s=Summary.of([info.load_time_s], "s"),
                             weights_load_s=info.weights_load_s, model_load_s=info.model_load_s,
                             compile_time_s=info.compile_time_s, compile_cache=info.compile_cache)
            if cfg.roofline:
                say("roofline")
                prompt_mean = sum(r.prompt_len for r in reqs[:cfg.n_latency_prompts]) / cfg.n_latency_prompts
                roof = roofline.compute(ckpt, info.dtype, resolved.kv_cache_dtype, decode_s, prompt_mean,
                                        cfg.output_len, hw)
        finally:
            if own:
                engine.shutdown(llm)
                llm = None
    if cfg.serving:
        say(f"serving: vllm serve, concurrency {','.join(map(str, cfg.concurrency))}")
        serve = serving.run_serving(resolved, bool(hw.gpus), reqs, cfg.concurrency, cfg.request_rate, cfg.warmup,
                                    cfg.goodput, cfg.seed, cfg.server_timeout_s)
    import os

    threads: dict = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if cfg.offline:
        import torch

        threads["torch_threads"] = torch.get_num_threads()
    res = PerfResult(threads=threads, checkpoint=str(ckpt), model=model_name, scheme=scheme, vllm_quantization=quant, engine=info,
                     config=cfg, workload=winfo, load=load, memory=memory, latency=latency, throughput=throughput,
                     roofline=roof, serving=serve, wall_time_s=time.perf_counter() - t_start,
                     started_at=started.isoformat(timespec="seconds"), provenance=collect(hw))
    if cfg.write:
        path = result_path(cfg.output_dir, model_name, scheme, started)
        res.output_path = str(path)
        atomic_write_json(path, res)
    return res


def load_result(path: Path) -> PerfResult:
    return PerfResult.model_validate(json.loads(Path(path).read_text()))
