"""``run_perf(PerfConfig) -> PerfResult``: preflight, offline benchmarks on one in-process engine,
the serving sweep on ``vllm serve``, the roofline, one JSON in ``perf_results/``.

Pass an already-loaded ``llm`` (with its ``EngineInfo``) to measure the engine another command
(e.g. ``eval``) loaded; it is then not shut down here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ptq_deploy import checkpoint, engine
from ptq_deploy.engine.memory import PeakSampler
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.perf import offline, roofline, serving, workload
from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.memory import MemoryStats, capacity_note, concurrent_sequences
from ptq_deploy.perf.result import LoadStats, PerfResult
from ptq_deploy.provenance import collect
from ptq_deploy.stats import Summary
from ptq_deploy.timeutil import timestamp


def _check(cfg: PerfConfig, max_model_len: int):
    need = cfg.input_len + cfg.output_len
    if need > max_model_len:
        raise UsageError(f"--input-len {cfg.input_len} + --output-len {cfg.output_len} = {need} tokens exceeds "
                         f"--max-model-len {max_model_len}")
    for name, sh in (cfg.shapes.items() if cfg.serving else ()):
        if sh.input_len + sh.output_len > max_model_len:
            raise UsageError(f"serving shape {name}: {sh.label()} = {sh.input_len + sh.output_len} tokens exceeds "
                             f"max_model_len {max_model_len}")
    if not (cfg.offline or cfg.serving):
        raise UsageError("nothing to run: both offline and serving are off")


def run_perf(cfg: PerfConfig, llm=None, info: engine.EngineInfo | None = None, hw: HardwareInfo | None = None,
             progress=None) -> PerfResult:
    say = progress or (lambda msg: None)
    hw = hw or detect()
    started = timestamp()
    t_start = time.perf_counter()
    ckpt = Path(cfg.checkpoint)
    engine.preflight(ckpt, cfg.engine, hw)  # one line, before anything is loaded
    facts = checkpoint.read(ckpt)
    resolved = info.settings if info is not None else engine.resolve(ckpt, cfg.engine, hw)
    _check(cfg, resolved.max_model_len)
    engine.apply_environment(resolved)

    tokenizer = workload.load_tokenizer(str(ckpt))
    seed = resolved.seed
    reqs = workload.build(tokenizer, cfg.dataset, cfg.num_prompts, cfg.input_len, cfg.output_len, seed)
    winfo = workload.info(reqs, cfg.dataset, seed, cfg.input_len, cfg.output_len)

    load = memory = latency = throughput = roof = serve = None
    quant = info.quantization if info else None
    own = llm is None
    if cfg.offline:
        if own:
            say(f"loading {ckpt} in vLLM")
            llm, info = engine.load(ckpt, cfg.engine, hw)
        quant = info.quantization
        try:
            blocks, bsize, max_conc = offline.kv_capacity(llm)
            kv_tok = roofline.kv_bytes_per_token(ckpt, resolved.kv_cache_dtype, info.dtype)
            w = roofline.weight_bytes(ckpt, info.dtype)
            with PeakSampler(gpu=bool(hw.gpus)) as mem:  # its first sample is the memory after load
                rss0, gpu0 = mem.first_rss, mem.first_gpu
                until = f", or until the mean is known within ±{cfg.latency_ci:.0%}" if cfg.latency_ci else ""
                say(f"latency: {cfg.n_latency_prompts} prompts at batch 1 and a batch of {len(reqs)}, "
                    f"{cfg.iterations} iterations{until}, after {cfg.warmup} warm-up "
                    f"(of {offline.WARMUP_OUTPUT_TOKENS} tokens)")
                latency, decode_s = offline.measure_latency(llm, reqs[:cfg.n_latency_prompts], reqs, cfg.iterations,
                                                            cfg.warmup, rel_ci=cfg.latency_ci)
                say(f"throughput: {len(reqs)} requests x {cfg.iterations} iterations")
                # the latency benchmark just ran this same batch (its warm-up included): no second warm-up
                throughput = offline.measure_throughput(llm, reqs, cfg.iterations, warmup=0)
            memory = MemoryStats(process="whole process: this one (in-process engine) and its children",
                                 rss_after_load_bytes=rss0, peak_rss_bytes=mem.peak_rss, rss_samples=mem.n,
                                 gpu_after_load_bytes=gpu0, peak_gpu_bytes=mem.peak_gpu, engine=info.memory,
                                 kv_cache_blocks=blocks, kv_cache_block_size=bsize,
                                 kv_cache_tokens=blocks * bsize if blocks and bsize else None,
                                 kv_cache_bytes=blocks * bsize * kv_tok if blocks and bsize else None,
                                 kv_bytes_per_token=kv_tok, weight_bytes_checkpoint=w.checkpoint_bytes,
                                 concurrent_sequences_at=concurrent_sequences(blocks, bsize) if blocks and bsize else {},
                                 vllm_max_concurrency=max_conc, capacity_note=capacity_note(resolved))
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
        ladder = (f"load sweep up to concurrency {cfg.max_concurrency}" if cfg.adaptive
                  else f"concurrency {','.join(map(str, cfg.concurrency))}")
        say(f"serving: vllm serve, {ladder}, shapes {', '.join(cfg.serving_shapes())}")
        serve = serving.run_serving(resolved, cfg, cfg.dataset, seed, say=say)
    threads: dict = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if cfg.offline:
        import torch  # already loaded by the engine

        threads["torch_threads"] = torch.get_num_threads()
    identity = facts.identity().model_copy(update={"kv_cache": _kv_label(facts, resolved.kv_cache_dtype)})
    res = PerfResult(identity=identity, started_at=started, wall_time_s=time.perf_counter() - t_start,
                     provenance=collect(hw), threads=threads, vllm_quantization=quant, engine=info, config=cfg,
                     workload=winfo, load=load, memory=memory, latency=latency, throughput=throughput,
                     roofline=roof, serving=serve)
    if cfg.write:
        res.write_new(cfg.output_dir)
    return res


def _kv_label(facts: checkpoint.Checkpoint, kv_cache_dtype: str) -> str:
    """The KV-cache option a result is about: the engine's dtype when set, else the checkpoint's."""
    return kv_cache_dtype if kv_cache_dtype != "auto" else facts.kv_cache
