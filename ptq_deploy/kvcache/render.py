"""The console view of a ``KVResult``: one row per method, then passkey by length x depth, then findings."""

from __future__ import annotations

from rich.table import Table

from ptq_deploy.kvcache.methods import NOT_INCLUDED, QUALITY_ONLY_NOTE, REGISTRY
from ptq_deploy.kvcache.result import Delta, KVResult

COLOUR = {"regressed": "red", "improved": "green", "not distinguishable": "yellow", "unknown": "dim"}


def delta_text(d: Delta | None, fmt: str = "+.3g") -> str:
    if d is None:
        return ""
    ci = f" ({d.ci95[0]:{fmt}}, {d.ci95[1]:{fmt}})" if d.ci95 else ""
    c = COLOUR.get(d.verdict, "")
    return f"{d.delta:{fmt}}{ci} [{c}]{d.verdict}[/{c}]"


def methods_table(res: KVResult) -> Table:
    t = Table(title=f"KV cache on {res.identity.label} (each row against its own backend's baseline: vLLM's "
                    f"auto cache, transformers' {res.compute_dtype} cache; * = {QUALITY_ONLY_NOTE})")
    for c in ("method", "in", "passkey acc", "Δ acc (95% CI)", "long-doc ppl", "Δ ppl (95% CI)", "gen ppl",
              "Δ gen ppl (95% CI)", "agreement", "B/token (ratio)", "max |Δlogit|", "KL"):
        t.add_column(c, no_wrap=c == "method")
    for m in res.methods:
        acc = m.passkey_accuracy
        t.add_row(m.method + (" *" if m.quality_only else ""), m.backend,
                  f"{acc.mean:.2f} (n={acc.n})" if acc else "", delta_text(m.passkey_delta, "+.2f"),
                  f"{m.longdoc_ppl:.4g}" if m.longdoc_ppl else "", delta_text(m.longdoc_delta),
                  f"{m.generation_ppl:.4g}" if m.generation_ppl else "", delta_text(m.generation_delta),
                  f"{m.agreement.mean:.2f}" if m.agreement else "",
                  f"{m.bytes_per_token.mean:,.0f} ({m.bytes_ratio:.2f}x)" if m.bytes_per_token and m.bytes_ratio else "",
                  f"{m.logit_max_abs_diff.mean:.3g}" if m.logit_max_abs_diff else "",
                  f"{m.kl.mean:.3g}" if m.kl else "")
    return t


def cost_table(res: KVResult) -> Table | None:
    """The vLLM rows' cost, measured in their engines: capacity, bytes per token, decode time by context."""
    rows = [m for m in res.methods if m.cost]
    if not rows:
        return None
    contexts = sorted({c for m in rows for c in m.cost.decode_ms_per_token})
    t = Table(title="vLLM KV cache: capacity and speed in the engine (decode: batch 1, median ms per output "
                    "token over the repeats)")
    for c in ("kv_cache_dtype", "attention backend", "KV tokens", "B/token", "seqs@4k / @32k",
              *(f"decode@{c}" for c in contexts), "slope ms/1k ctx", "long-ctx tok/s"):
        t.add_column(c, justify="left" if c in ("kv_cache_dtype", "attention backend") else "right")
    for m in rows:
        c = m.cost
        seqs = " / ".join(str(c.concurrent_sequences_at.get(k, "")) for k in (4096, 32768))
        thr = c.long_context_tokens_per_s
        t.add_row(f"{c.kv_cache_dtype} ({m.method})", c.attention_backend or "", f"{c.capacity_tokens:,}"
                  if c.capacity_tokens else "", f"{c.bytes_per_token:,.0f}" if c.bytes_per_token else "", seqs,
                  *(f"{c.decode_ms_per_token[k].median:.2f}" if k in c.decode_ms_per_token else "" for k in contexts),
                  f"{c.decode_slope_ms_per_1k:+.3f}" if c.decode_slope_ms_per_1k is not None else "",
                  f"{thr.median:.1f} ({c.concurrency} x {c.long_context})" if thr else "")
    return t


def passkey_table(res: KVResult) -> Table:
    cells = sorted({(c.length, c.depth) for m in res.methods for c in m.passkey})
    t = Table(title="passkey accuracy by context length x depth (correct / n)")
    t.add_column("method")
    for length, depth in cells:
        t.add_column(f"{length}@{depth:.0%}", justify="right")
    for m in res.methods:
        by = {(c.length, c.depth): c for c in m.passkey}
        t.add_row(f"{m.method} ({m.backend})", *(f"{by[k].correct}/{by[k].n}" if k in by else "" for k in cells))
    return t


def findings_lines(res: KVResult) -> list[str]:
    return [f"[{'red' if f.severity == 'error' else 'yellow'}]{f.severity}[/]: {f.message}" for f in res.findings]


def registry_table() -> Table:
    t = Table(title="KV-cache methods", caption="; ".join(f"not included: {k} ({why})" for k, why in NOT_INCLUDED.items()))
    for c in ("name", "runs in", "parameters", "description"):
        t.add_column(c)
    for m in REGISTRY.values():
        t.add_row(m.name, f"transformers ({QUALITY_ONLY_NOTE})" if m.quality_only else "vLLM",
                  ", ".join(f"{k}={v}" for k, v in m.params().items()), m.description)
    return t
