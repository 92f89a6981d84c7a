"""A cell's speed and size figures, from its perf, inspect and compress results.

- throughput: offline output tokens/s (median over iterations, ± stdev); speedup = ratio of medians;
- TTFT / TPOT: the serving sweep's lowest concurrency when it ran, else offline batch-1 prefill and
  decode time per token;
- weights: tensor bytes of the checkpoint (inspect, else perf, else compress); memory: the perf engine's own
  (NVML per-process GPU memory, or the RSS its load added on CPU), which includes vLLM's KV-cache space;
  results without it: the measured peak of the whole process (GPU when there is one, else RSS);
- capacity: the KV-cache tokens vLLM allocated and how many 4k / 32k sequences fit at once;
- energy: joules per output token over the offline throughput iterations (NVML; none on CPU).
- bits per weight (inspect: stored bytes of the quantized Linear layers) and effective size: for a
  fake-quantized (POT / APOT) checkpoint, from its declared codes + scales (``ptq_deploy.json``), since
  its weights are stored dense; such a row is ``quality_only``.
"""

from __future__ import annotations

import math

from ptq_deploy.report.cells import Cell
from ptq_deploy.report.row import Row, err, sig

GB = 1e9


def _throughput(perf) -> tuple[float, float, int] | None:
    if perf is None or perf.throughput is None or perf.throughput.output_tokens_per_s.n == 0:
        return None
    s = perf.throughput.output_tokens_per_s
    return s.median, s.stdev, s.n


def _speed(row: Row, perf, base: Cell | None) -> None:
    tp = _throughput(perf)
    if not tp:
        return
    # one iteration has no spread: no "± 0"
    row.throughput_tok_s, row.throughput_tok_s_stdev, row.throughput_n = sig(tp[0]), err(tp[1]) if tp[2] > 1 else None, tp[2]
    btp = _throughput(base.results.get("perf")) if base is not None else None
    if row.baseline:
        row.speedup = 1.0
    elif btp and btp[0] > 0:
        row.speedup = sig(tp[0] / btp[0])
        if tp[2] > 1 and btp[2] > 1:
            rel = math.sqrt((tp[1] / tp[0]) ** 2 / tp[2] + (btp[1] / btp[0]) ** 2 / btp[2])
            row.speedup_stderr = err(tp[0] / btp[0] * rel)


def _latency(row: Row, perf) -> None:
    levels = sorted(perf.serving.levels, key=lambda lv: lv.concurrency) if perf.serving else []
    levels = [lv for lv in levels if lv.ttft_ms.n > 0]
    if levels:
        lv = levels[0]
        row.latency_source = f"serving, concurrency {lv.concurrency}"
        row.ttft_p50_ms, row.ttft_p99_ms = sig(lv.ttft_ms.median), sig(lv.ttft_ms.p99)
        if lv.tpot_ms.n:
            row.tpot_p50_ms, row.tpot_p99_ms = sig(lv.tpot_ms.median), sig(lv.tpot_ms.p99)
    elif perf.latency is not None:
        lat = perf.latency
        row.latency_source = "offline, batch 1"
        if lat.batch1_prefill.n:
            row.ttft_p50_ms, row.ttft_p99_ms = sig(lat.batch1_prefill.median * 1e3), sig(lat.batch1_prefill.p99 * 1e3)
        if lat.batch1_decode_per_token.n:
            d = lat.batch1_decode_per_token
            row.tpot_p50_ms, row.tpot_p99_ms = sig(d.median * 1e3), sig(d.p99 * 1e3)


def _perf(row: Row, c: Cell, base: Cell | None) -> None:
    perf = c.results.get("perf")
    if perf is None:
        return
    _speed(row, perf, base)
    _latency(row, perf)
    if perf.load and perf.load.engine_init_s and perf.load.engine_init_s.n:
        row.load_s = sig(perf.load.engine_init_s.median)
    elif perf.engine is not None:  # the engine was loaded by another step and handed to perf
        row.load_s = sig(perf.engine.load_time_s)
    elif perf.serving:
        row.load_s = sig(perf.serving.server.startup_s.median)
    if perf.memory:
        _memory(row, perf.memory)
    en = perf.throughput.energy if perf.throughput else None
    if en is not None and en.joules_per_output_token is not None and en.joules_per_output_token.n:
        row.energy_j_per_token = sig(en.joules_per_output_token.median)
        row.energy_j_per_token_stdev = err(en.joules_per_output_token.stdev) if en.joules_per_output_token.n > 1 else None
    if perf.roofline and perf.roofline.mbu.n:
        row.roofline_pct = sig(perf.roofline.mbu.median * 100)


def _memory(row: Row, m) -> None:
    own = m.engine.own_bytes if m.engine is not None else None
    if own is not None:
        row.memory_gb, row.memory_source = sig(own / GB), m.engine.source
    else:
        gpu = m.peak_gpu_bytes
        row.memory_gb = sig((gpu if gpu is not None else m.peak_rss_bytes) / GB)
        row.memory_source = "peak GPU memory" if gpu is not None else "peak process RSS"
    row.kv_tokens = m.kv_cache_tokens
    row.seqs_at_4k, row.seqs_at_32k = m.concurrent_sequences_at.get(4096), m.concurrent_sequences_at.get(32768)


def _sizes(row: Row, c: Cell) -> None:
    insp, perf, comp = c.results.get("inspect"), c.results.get("perf"), c.results.get("compress")
    if row.load_s is None and insp is not None and insp.runtime and insp.runtime.load_time_s:
        row.load_s = sig(insp.runtime.load_time_s)
    weights = (insp.tensor_bytes if insp is not None else None) \
        or (perf.memory.weight_bytes_checkpoint if perf is not None and perf.memory else None) \
        or (comp.checkpoint_bytes if comp is not None else None)
    row.weights_gb = sig(weights / GB) if weights else None
    meta = comp.checkpoint if comp is not None else insp.metadata if insp is not None else None
    fake = meta.fake_quant if meta is not None else None
    row.method = meta.weight_method if meta is not None else None
    if fake is not None:  # stored dense: its size is that of its codes and scales
        row.quality_only, row.bits_per_weight = True, sig(fake.bits_per_weight)
        row.effective_gb = sig(fake.effective_bytes(weights) / GB) if weights else None
    else:
        if insp is not None:
            row.bits_per_weight = sig(insp.linear_bits_per_weight or insp.all_linear_bits_per_weight)
        row.effective_gb = row.weights_gb
    if comp is not None:
        row.compress_s = sig(comp.wall_time_s)
    elif "compress" in c.steps and c.steps["compress"].status == "ok":
        row.compress_s = sig(c.steps["compress"].duration_s)


def fill(row: Row, c: Cell, base: Cell | None) -> None:
    """Set the row's throughput, latency, load, memory, size and compression figures."""
    _perf(row, c, base)
    _sizes(row, c)
