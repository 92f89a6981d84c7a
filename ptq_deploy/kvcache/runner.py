"""run_kv: the long-context track of one checkpoint, every KV-cache method: vLLM's KV dtypes in the engine
(``served``), the quality-only methods in transformers (``measure``), each against its own baseline.

Order of work: the methods are checked first (an unknown name, a vLLM KV dtype this device cannot run, or
calibrated scales the checkpoint lacks, is one line before anything loads); the samples are built with the
checkpoint's tokenizer; each vLLM dtype is measured in its own engine, then the model is loaded once in
transformers (``settings.dtype``) and each sample is prefilled once at full precision and measured with
every quality-only method. The result (``KVResult``) is written atomically to ``output_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ptq_deploy import checkpoint, probe
from ptq_deploy.errors import NotRunnableHere, UsageError
from ptq_deploy.eval.runner import resolve_checkpoint
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.kvcache import analysis, longctx, methods
from ptq_deploy.kvcache import served as served_track
from ptq_deploy.kvcache.config import KVConfig, KVSettings
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import KVResult, MethodResult, Samples
from ptq_deploy.provenance import collect
from ptq_deploy.stats import Summary
from ptq_deploy.timeutil import timestamp


ANSWER_ROOM = 16  # tokens after a passkey prompt: its answer, decoded (vLLM) or scored (transformers) after it


def check_methods(names: list[str], hw: HardwareInfo) -> tuple[list[KVMethod], list[KVMethod]]:
    """(methods measured in transformers, vLLM KV dtypes measured in the engine), each with its own baseline
    first (``none``, ``auto``) and empty where none of its kind was asked. A vLLM KV dtype this device
    cannot run is refused with the reason (the probe's measurement on ``hw``; the static rules without one)."""
    rules = probe.rules(hw)
    ms = [methods.get(n, rules.kv_dtypes) for n in names]
    served = [m for m in ms if not m.baseline and not m.quality_only]
    for m in served:
        sup = rules.kv(m.vllm_dtype)
        if not sup.runnable:
            raise NotRunnableHere(f"KV cache {m.name}: not runnable here: {sup.reason}")
    quality = [m for m in ms if m.quality_only]
    return ([methods.get("none"), *quality] if quality or not served else []), (
        [methods.VLLM_BASELINE, *served] if served else [])


def engine_checkpoints(served: list[KVMethod], path: Path, scales_from: Path | None) -> dict[str, Path]:
    """The checkpoint each vLLM row's engine loads: a calibrated method the one with llmcompressor's KV
    scales (``scales_from``, else ``path``), the others ``path``, which must then carry none (vLLM would read
    them). ``scales_from`` must be the same model and weight scheme with scales added."""
    def has_scales(p: Path) -> bool:
        return checkpoint.read(p).quantization.kv_cache is not None

    scaled = scales_from or path
    if scales_from is not None:
        def shape(p: Path) -> tuple:
            c = checkpoint.read(p)
            q, cfg = c.quantization, c.config.get("text_config", c.config)
            return (q.weights, q.input_activations, cfg.get("architectures"), cfg.get("hidden_size"),
                    cfg.get("num_hidden_layers"), cfg.get("vocab_size"))

        if shape(path) != shape(scales_from):
            raise UsageError(f"--scales-from {scales_from}: not the same model and weight quantization as {path}")
    out = {}
    for m in served:
        if m.calibrated and not has_scales(scaled):
            raise UsageError(f"KV cache {m.name} reads calibrated KV scales and {scaled} has none (`ptq-deploy "
                             "compress --kv-cache fp8` writes them; --scales-from names such a copy; fp8-uncalibrated "
                             "measures vLLM's default scales)")
        if not m.calibrated and not m.baseline and has_scales(path):
            raise UsageError(f"KV cache {m.name} measures vLLM's default scales, but {path} carries calibrated ones "
                             "that vLLM would read: measure it on the checkpoint compressed without --kv-cache")
        out[m.name] = scaled if m.calibrated else path
    return out


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
    return _compared(rows, settings, prefill_s)


def measure_in_vllm(engines: dict[str, Path], tok, ms: list[KVMethod], settings: KVSettings, docs: list[longctx.Document],
                    items: list[longctx.PasskeySample], say: Callable[[str], None]) -> Measured:
    """The vLLM KV dtypes, each in its own engine (on ``engines[name]``), compared with the ``auto`` engine."""
    x = served_track.Inputs(tok, items, [(d.id, d.text) for d in docs], settings.scored_tokens)
    filler = tok(longctx.filler_text(), add_special_tokens=False).input_ids
    contexts = sorted({it.length for it in items})
    got = served_track.measure_served(engines, ms, tok, x, settings.generate_tokens,
                                      settings.served, filler, contexts, say)
    rows = []
    for m in ms:
        c = got.costs[m.name]
        row = analysis.method_row(m, got.samples[m.name], items, {}, got.times[m.name])
        rows.append(row.model_copy(update={
            "backend": "vllm", "cost": c,
            "bytes_per_token": Summary.of([c.bytes_per_token], "B") if c.bytes_per_token else None}))
    return _compared(rows, settings)


def _compared(rows: list[MethodResult], settings: KVSettings, prefill_s: float = 0.0) -> Measured:
    base = rows[0].model_copy(update={"bytes_ratio": 1.0})
    rows = [base] + [analysis.compare(r, base, settings.bootstrap_iters, settings.seed) for r in rows[1:]]
    found = [f for r in rows[1:] for f in analysis.findings(r)]
    bad = {f.method for f in found if f.severity == "error"}
    return Measured([r for r in rows if r.method not in bad], [r for r in rows if r.method in bad], found, prefill_s)


def run_kv(cfg: KVConfig, progress: Callable[[str], None] | None = None) -> KVResult:
    """Measure ``cfg.methods`` on ``cfg.checkpoint``; the result is written unless ``cfg.write`` is off."""
    in_hf, in_vllm = check_methods(cfg.methods, detect())
    path, identity, _ = resolve_checkpoint(cfg.checkpoint)
    engines = engine_checkpoints(in_vllm, Path(path), Path(cfg.scales_from) if cfg.scales_from else None)
    settings = cfg.settings()
    say = progress or (lambda _m: None)
    docs = longctx.chapters(settings.documents)
    if len(docs) < settings.documents:
        raise UsageError(f"documents: {settings.documents} asked, {len(docs)} chapters bundled")
    max_pos = checkpoint.read(Path(path)).max_position
    if max_pos and max(settings.passkey.lengths) + ANSWER_ROOM > max_pos:
        raise UsageError(f"passkey length {max(settings.passkey.lengths)} and its answer exceed the model's {max_pos} "
                         f"positions (--lengths: at most {max_pos - ANSWER_ROOM})")
    if max_pos and docs and max_pos < 4096:
        raise UsageError(f"long-document perplexity reads whole chapters of up to 4096 tokens, beyond the model's "
                         f"{max_pos} positions (--documents 0 leaves it out)")
    from transformers import AutoTokenizer  # heavy

    started, t0 = timestamp(), time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    items = longctx.passkey_samples(tok, settings.passkey)
    parts = []
    if in_vllm:
        parts.append(measure_in_vllm(engines, tok, in_vllm, settings, docs, items, say))
    if in_hf:
        import torch  # heavy
        from transformers import AutoModelForCausalLM  # heavy

        if settings.threads:
            torch.set_num_threads(settings.threads)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, settings.dtype)).eval()
        parts.append(measure_all(model, tok, in_hf, settings, docs, items, say))
    res = KVResult(identity=identity, started_at=started, wall_time_s=time.perf_counter() - t0,
                   provenance=collect(), settings=settings, compute_dtype=settings.dtype, model_max_position=max_pos,
                   methods=[r for p in parts for r in p.rows], rejected=[r for p in parts for r in p.rejected],
                   findings=[f for p in parts for f in p.findings], prefill_s=sum(p.prefill_s for p in parts),
                   data=longctx.provenance(str(path), settings.passkey, docs))
    if cfg.write:
        res.write_new(cfg.output_dir)
    return res
