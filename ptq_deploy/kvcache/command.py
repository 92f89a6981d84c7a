"""``ptq-deploy kv``: the KV-cache track from the command line (registered by ``ptq_deploy.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ptq_deploy.errors import UsageError
from ptq_deploy.kvcache.config import KVConfig, KVSettings
from ptq_deploy.kvcache.longctx import PasskeySpec
from ptq_deploy.ui import console, option_default as _d, option_help as _h, out


def kv_cmd(
    checkpoint: str = typer.Argument("default", help="checkpoint directory, hub id, .gguf file or 'default'"),
    method: list[str] = typer.Option(_d(KVConfig, "methods"), "--method", "-m",
                                     help="KV-cache method (comma-separated or repeated; see --list); the baseline "
                                          "'none' is always measured"),
    list_methods: bool = typer.Option(False, "--list", help="list the KV-cache methods and exit"),
    lengths: str = typer.Option(",".join(map(str, _d(KVSettings, "passkey").lengths)),
                                help="passkey context lengths in tokens, comma-separated"),
    samples: int = typer.Option(_d(KVSettings, "passkey").samples, help="passkey samples per length x depth"),
    documents: int = typer.Option(_d(KVSettings, "documents"), help=_h(KVSettings, "documents")),
    scored_tokens: int = typer.Option(_d(KVSettings, "scored_tokens"), help=_h(KVSettings, "scored_tokens")),
    chunk: int = typer.Option(_d(KVSettings, "chunk"), help=_h(KVSettings, "chunk")),
    generate_tokens: int = typer.Option(_d(KVSettings, "generate_tokens"), help=_h(KVSettings, "generate_tokens")),
    dtype: str = typer.Option(_d(KVSettings, "dtype"), help=_h(KVSettings, "dtype")),
    threads: Optional[int] = typer.Option(_d(KVSettings, "threads"), help=_h(KVSettings, "threads")),
    scales_from: Optional[str] = typer.Option(None, "--scales-from", help=_h(KVConfig, "scales_from")),
    output_dir: Path = typer.Option(_d(KVConfig, "output_dir"), help="where the result JSON goes"),
):
    """Long-context cost and benefit of KV-cache methods: passkey retrieval by depth x length, long-document
    and generation perplexity against the unquantized cache, with proof each method was applied (bytes the
    cache holds, logit difference on the same input).

    vLLM's KV dtypes (fp8, fp8-uncalibrated, any kv_cache_dtype vLLM offers) run in the engine, one engine
    each, against vLLM's auto cache: every score reads the engine's paged cache, and its capacity, bytes per
    token and decode time by context length are measured there (refused in one line where vLLM cannot run
    them here). Quality-only methods (KIVI/KVQuant/FORGE-style, transformers' QuantizedCache) run through
    transformers against its unquantized cache: every sample is prefilled once at full precision, each method
    holds that cache in its own form and every later token reads it.
    """
    from ptq_deploy.kvcache.render import cost_table, findings_lines, methods_table, passkey_table, registry_table
    from ptq_deploy.kvcache.runner import run_kv

    if list_methods:
        out.print(registry_table())
        return
    try:
        lens = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--lengths {lengths!r}: expected comma-separated integers, e.g. 1024,2048") from None
    cfg = KVConfig(checkpoint=checkpoint, methods=method, passkey=PasskeySpec(lengths=lens, samples=samples),
                   documents=documents, scored_tokens=scored_tokens, chunk=chunk, generate_tokens=generate_tokens,
                   dtype=dtype, threads=threads, scales_from=scales_from, output_dir=output_dir)
    res = run_kv(cfg, progress=lambda m: console.print(f"[dim]{m}[/dim]", highlight=False))
    out.print(methods_table(res), width=None if out.is_terminal else max(out.width, 160))
    out.print(passkey_table(res))
    if (cost := cost_table(res)) is not None:
        out.print(cost, width=None if out.is_terminal else max(out.width, 160))
    for line in findings_lines(res):
        out.print(line, highlight=False)
    out.print(f"[green]wrote[/green] {res.path}")
    if not res.ok:
        raise typer.Exit(1)
