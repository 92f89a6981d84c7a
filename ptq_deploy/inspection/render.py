"""The console view of an ``InspectReport`` (rich); ``--json`` prints the report itself."""

from __future__ import annotations

from collections import defaultdict

from rich.markup import escape
from rich.table import Table

from ptq_deploy.inspection.aggregate import bits_per_weight
from ptq_deploy.inspection.architecture import layer_type
from ptq_deploy.inspection.report import InspectReport, LinearLayer


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f} MiB"


def render(rep: InspectReport, console) -> None:
    """Print the report with rich (the CLI's human output)."""
    q = rep.quantization
    console.print(f"[bold]{escape(rep.identity.checkpoint)}[/bold]")
    console.print(f"architecture: {rep.architecture or '?'} ({rep.model_type or '?'}); "
                  f"quantization: [bold]{q.name}[/bold] "
                  + (f"({q.method}, format {q.format}, status {q.status})" if q.method else "(none: dense checkpoint)"))
    if q.weights:
        acts = q.input_activations.model_dump(exclude_none=True) if q.input_activations else None
        console.print(f"  weights: {q.weights.model_dump(exclude_none=True)}"
                      + (f"; input activations: {acts}" if acts else "")
                      + (f"; targets {q.targets}, ignore {q.ignore}" if q.targets else ""), markup=False)
    if q.kv_cache:
        console.print(f"  kv-cache scheme: {q.kv_cache.model_dump(exclude_none=True)}", markup=False)
    if rep.metadata:
        m = rep.metadata
        made = m.provenance.created_at if m.provenance else "?"
        console.print(f"  made by ptq-deploy: scheme {m.scheme}, group {m.group_size or '-'}, kv-cache {m.kv_cache}, "
                      f"from {m.source.spec} ({made})", markup=False)
        if m.fake_quant:
            fq = m.fake_quant
            console.print(f"  fake-quantized: {fq.describe()}, levels +/-{[round(x, 4) for x in fq.levels]} x scale; "
                          f"{fq.bits_per_weight:.3f} bits/weight as codes + scales -> effective size "
                          f"{_mib(rep.effective_bytes)} (stored dense: {_mib(rep.tensor_bytes)})", markup=False)

    t = Table(title="tensors by layer type")
    for c in ("layer type", "class", "modules", "tensors", "dtypes", "weights", "size", "bits/weight"):
        t.add_column(c, justify="right" if c in ("modules", "tensors", "weights", "size", "bits/weight") else "left",
                     no_wrap=c in ("layer type", "class", "size"))
    lin_bits: dict[str, list[LinearLayer]] = defaultdict(list)
    for lin in rep.linears:
        if lin.bits_per_weight:
            lin_bits[layer_type(lin.name)].append(lin)
    for key, a in rep.by_layer_type.items():
        bits = bits_per_weight(lin_bits.get(key, []))
        t.add_row(key, a.module_class or "-", str(a.modules), str(a.tensors), " ".join(a.dtypes), f"{a.params:,}",
                  _mib(a.bytes), f"{bits:.2f}" if bits else "-")
    console.print(t)
    t = Table(title="tensors by dtype")
    for c in ("dtype", "tensors", "size"):
        t.add_column(c)
    for k, a in rep.by_dtype.items():
        t.add_row(k, str(a.tensors), _mib(a.bytes))
    console.print(t)
    ratio = f"{rep.compression_ratio:.2f}x" if rep.compression_ratio else "-"
    console.print(f"size: {_mib(rep.tensor_bytes)} of tensors in {len(rep.files)} safetensors file(s), "
                  f"{_mib(rep.disk_bytes)} on disk; BF16 equivalent {_mib(rep.bf16_bytes)} (from the {rep.shape_source}) "
                  f"-> compression [bold]{ratio}[/bold]")
    if rep.all_linear_bits_per_weight:
        console.print("bits per weight (Linear layers): "
                      + (f"[bold]{rep.linear_bits_per_weight:.3f}[/bold] quantized, " if rep.linear_bits_per_weight else "")
                      + f"{rep.all_linear_bits_per_weight:.3f} all (scales, zero points included)"
                      + (f"; stored dense: as codes + scales {rep.metadata.fake_quant.bits_per_weight:.3f} quantized"
                         if rep.metadata and rep.metadata.fake_quant else ""))

    h = rep.hardware
    s = h.support
    console.print(f"hardware fit on {escape(h.device)}: "
                  + ("[green]runs[/green]" if s.runnable else "[red]does not run[/red]")
                  + f", kernel {escape(s.kernel)}, fast path {'yes' if s.fast_path else 'no'}"
                  + (f" ({escape(s.reason)})" if s.reason else "")
                  + f"; weights need {_mib(h.weight_memory_bytes)} of {h.device_memory_bytes / 2**30:.0f} GiB"
                  + f" [{escape(s.source)}]")
    if h.kv_cache:
        console.print(f"  kv-cache: {'runs' if h.kv_cache.runnable else 'does not run'} ({escape(h.kv_cache.kernel)}"
                      f"{'; ' + escape(h.kv_cache.reason) if h.kv_cache.reason else ''})")
    if rep.runtime:
        r = rep.runtime
        if r.loaded:
            console.print(f"vLLM: quantization={r.quantization}, dtype {r.dtype}, kv-cache {r.kv_cache_dtype}, "
                          f"loaded in {r.load_time_s:.1f} s; linear kernels:")
            for k, n in r.linear_kernels.items():
                console.print(f"  {n:4d} x {escape(k)}")
        elif r.not_runnable:
            console.print(f"vLLM: [yellow]not loaded[/yellow]: {escape(r.not_runnable)}")
        else:
            console.print("vLLM: [red]load failed[/red] (see findings)")

    style = {"error": "red", "warning": "yellow", "info": "dim"}
    console.print("findings:" if rep.findings else "findings: none")
    for f in rep.findings:
        console.print(f"  [{style[f.severity]}]{f.severity:7s}[/{style[f.severity]}] {escape(f.message)}")
    n = len(rep.errors)
    console.print("[green]OK[/green]: the checkpoint carries what its config claims" if not n else
                  f"[red]{n} error finding(s)[/red]")
