"""Rich summary tables of a PerfResult (the console view; the JSON has everything)."""

from __future__ import annotations

from rich.table import Table

from ptq_deploy.perf.result import PerfResult
from ptq_deploy.stats import Summary


def _s(s: Summary | None, scale: float = 1.0, fmt: str = ".3g") -> str:
    if s is None or s.n == 0:
        return "-"
    return f"{s.median * scale:{fmt}} (p90 {s.p90 * scale:{fmt}}, p99 {s.p99 * scale:{fmt}}, ±{s.stdev * scale:.2g}, n={s.n})"


def summary_tables(r: PerfResult) -> list[Table]:
    tables = []
    t = Table(title=f"perf {r.identity.label} (vLLM quantization: {r.vllm_quantization or 'none'}; "
                    f"{r.workload.num_prompts} prompts x {r.workload.input_len} in / {r.workload.output_len} out, "
                    f"{r.workload.dataset})")
    t.add_column("measure")
    t.add_column("median (p90, p99, ±stdev, n)")
    if r.load and r.load.engine_init_s:
        t.add_row("engine load s", _s(r.load.engine_init_s))
        if r.load.weights_load_s is not None:
            t.add_row("weights load s (vLLM)", f"{r.load.weights_load_s:.3g}")
    if r.memory:
        m = r.memory
        if m.engine is not None and m.engine.own_bytes is not None:
            t.add_row("engine memory GiB", f"{m.engine.own_bytes / 2**30:.2f} ({m.engine.source})")
        t.add_row("whole process RSS after load / peak GiB", f"{m.rss_after_load_bytes / 2**30:.2f} / "
                  f"{m.peak_rss_bytes / 2**30:.2f} (n={m.rss_samples} samples)")
        if m.kv_cache_tokens:
            seqs = ", ".join(f"{n:,} at {c // 1024}k" for c, n in m.concurrent_sequences_at.items())
            t.add_row("KV cache capacity", f"{m.kv_cache_tokens:,} tokens; concurrent sequences: {seqs} "
                      f"({m.capacity_note or ''})")
    if r.latency:
        t.add_row("batch-1 e2e latency ms", _s(r.latency.batch1_e2e, 1e3))
        t.add_row("batch-1 prefill ms", _s(r.latency.batch1_prefill, 1e3))
        t.add_row("batch-1 decode ms/token", _s(r.latency.batch1_decode_per_token, 1e3))
        t.add_row(f"batch-{r.latency.batch_size} latency s", _s(r.latency.batch_e2e))
    if r.throughput:
        t.add_row("throughput req/s", _s(r.throughput.requests_per_s))
        t.add_row("output tok/s", _s(r.throughput.output_tokens_per_s))
        t.add_row("total tok/s", _s(r.throughput.total_tokens_per_s))
        en = r.throughput.energy
        if en is not None:
            t.add_row("energy J/output token", _s(en.joules_per_output_token) if en.joules_per_output_token
                      else en.source)
    if r.roofline:
        rf = r.roofline
        t.add_row("decode bytes/token MB", f"{rf.bytes_per_output_token / 1e6:.3g}")
        t.add_row("achieved GB/s", _s(rf.achieved_gbps))
        t.add_row(f"MBU vs {rf.peak.gbps:.3g} GB/s ({rf.peak.source})", _s(rf.mbu))
        if rf.second_peak is not None and rf.mbu_vs_second is not None:
            t.add_row(f"MBU vs {rf.second_peak.gbps:.3g} GB/s ({rf.second_peak.source})", _s(rf.mbu_vs_second))
    if t.row_count:  # nothing offline ran: only the serving tables
        tables.append(t)
    if r.serving:
        for cv in r.serving.curves:
            shape = f"{cv.shape}: {cv.input_len} in / {cv.output_len} out; " if cv.input_len else ""
            s = Table(title=f"serving (vllm serve; {shape}startup {r.serving.server.startup_s.median:.1f} s)",
                      caption=f"stopped: {cv.stopped}")
            for c in ("concurrency", "ok/n", "TTFT ms", "TPOT ms", "ITL ms", "E2E ms", "req/s", "out tok/s", "goodput"):
                s.add_column(c)
            for lv in cv.levels:
                s.add_row(str(lv.concurrency), f"{lv.completed}/{lv.num_requests}", _s(lv.ttft_ms), _s(lv.tpot_ms),
                          _s(lv.itl_ms), _s(lv.e2el_ms), f"{lv.request_throughput:.3g}", f"{lv.output_throughput:.3g}",
                          "-" if lv.request_goodput is None else f"{lv.request_goodput:.3g}")
            tables.append(s)
    return tables
