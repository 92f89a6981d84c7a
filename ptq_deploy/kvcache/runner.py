"""run_kv: the long-context track of one checkpoint, every KV-cache method, in transformers.

Order of work: the methods are checked first (an unknown name, or a vLLM KV dtype this device cannot
run, is one line before anything loads); then the model is loaded once (``settings.dtype``), the samples
are built with its own tokenizer, and each sample is prefilled once at full precision and measured with
every method (``measure``). The result (``KVResult``) is written atomically to ``output_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ptq_deploy import probe
from ptq_deploy.errors import NotRunnableHere, UsageError
from ptq_deploy.eval.runner import resolve_checkpoint
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.kvcache import analysis, longctx, methods
from ptq_deploy.kvcache.config import KVConfig, KVSettings
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import KVResult, Samples
from ptq_deploy.provenance import collect
from ptq_deploy.timeutil import timestamp


def check_methods(names: list[str], hw: HardwareInfo) -> list[KVMethod]:
    """The methods to measure here, baseline first; vLLM KV dtypes are refused with the reason (the probe's
    measurement on ``hw``, this machine; the static rules without one)."""
    ms = [methods.get(n) for n in names]
    for m in ms:
        if m.baseline or m.quality_only:
            continue
        sup = probe.rules(hw).kv(m.vllm_dtype)
        if not sup.runnable:
            raise NotRunnableHere(f"KV cache {m.name}: not runnable here: {sup.reason}")
        raise UsageError(f"KV cache {m.name} is served by vLLM: measure it with `ptq-deploy eval CKPT --kv-cache-dtype "
                         f"{m.vllm_dtype} --tasks passkey` or an experiment's kv_cache: [{m.name}] cell")
    return sorted(ms, key=lambda m: not m.baseline)


class Measured:
    """What ``measure_all`` returns: the rows (baseline first), the rejected methods and the findings."""

    def __init__(self, rows, rejected, findings, prefill_s: float):
        self.rows, self.rejected, self.findings, self.prefill_s = rows, rejected, findings, prefill_s


def measure_all(model, tok, ms: list[KVMethod], settings: KVSettings, docs: list[longctx.Document],
                items: list[longctx.PasskeySample], say: Callable[[str], None]) -> Measured:
    """Every sample prefilled once, every method measured on it (``ms[0]`` must be the baseline)."""
    import torch  # heavy

    from ptq_deploy.kvcache import measure  # heavy: torch, transformers' cache classes

    if not ms or not ms[0].baseline:
        raise UsageError("the baseline KV cache (none) must be measured first")
    samples = {m.name: Samples() for m in ms}
    buffers: dict[str, dict[str, float]] = {m.name: {} for m in ms}
    times = {m.name: 0.0 for m in ms}
    work = [(f"passkey {it.id}", lambda it=it: measure.passkey(model, tok, it, ms, samples, buffers, times))
            for it in items]
    work += [(f"chapter {d.id}", lambda d=d: measure.chapter(model, tok, d.id, d.text, settings.scored_tokens,
                                                           settings.chunk, settings.generate_tokens, ms, samples,
                                                           buffers, times)) for d in docs]
    prefill_s = 0.0
    with torch.inference_mode():
        for i, (what, fn) in enumerate(work):
            say(f"{i + 1}/{len(work)} {what}")
            before, t = sum(times.values()), time.perf_counter()
            fn()
            prefill_s += time.perf_counter() - t - (sum(times.values()) - before)
    rows = [analysis.method_row(m, samples[m.name], items, buffers[m.name], times[m.name]) for m in ms]
    base = rows[0].model_copy(update={"bytes_ratio": 1.0})
    rows = [base] + [analysis.compare(r, base, settings.bootstrap_iters, settings.seed) for r in rows[1:]]
    found = [f for r in rows[1:] for f in analysis.findings(r)]
    bad = {f.method for f in found if f.severity == "error"}
    return Measured([r for r in rows if r.method not in bad], [r for r in rows if r.method in bad], found, prefill_s)


def run_kv(cfg: KVConfig, progress: Callable[[str], None] | None = None) -> KVResult:
    """Measure ``cfg.methods`` on ``cfg.checkpoint``; the result is written unless ``cfg.write`` is off."""
    ms = check_methods(cfg.methods, detect())
    path, identity, _ = resolve_checkpoint(cfg.checkpoint)
    settings = cfg.settings()
    docs = longctx.chapters(settings.documents)
    if len(docs) < settings.documents:
        raise UsageError(f"documents: {settings.documents} asked, {len(docs)} chapters bundled")
    import torch  # heavy
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy

    if settings.threads:
        torch.set_num_threads(settings.threads)
    started, t0 = timestamp(), time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, settings.dtype)).eval()
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and max(settings.passkey.lengths) > max_pos:
        raise UsageError(f"passkey length {max(settings.passkey.lengths)} exceeds the model's {max_pos} positions "
                         "(--lengths)")
    if max_pos and docs and max_pos < 4096:
        raise UsageError(f"long-document perplexity reads whole chapters of up to 4096 tokens, beyond the model's "
                         f"{max_pos} positions (--documents 0 leaves it out)")
    items = longctx.passkey_samples(tok, settings.passkey)
    got = measure_all(model, tok, ms, settings, docs, items, progress or (lambda _m: None))
    res = KVResult(identity=identity, started_at=started, wall_time_s=time.perf_counter() - t0,
                   provenance=collect(), settings=settings, compute_dtype=settings.dtype, model_max_position=max_pos,
                   methods=got.rows, rejected=got.rejected, findings=got.findings, prefill_s=got.prefill_s,
                   data=longctx.provenance(str(path), settings.passkey, docs))
    if cfg.write:
        res.write_new(cfg.output_dir)
    return res
