"""ptq-deploy command line: a thin shell over the library (every command = one library call)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ptq_deploy import __version__
from ptq_deploy.errors import NotBuiltYet, PtqError
from ptq_deploy.ui import console, out

app = typer.Typer(
    name="ptq-deploy",
    help="Compress a Hugging Face LLM with llmcompressor, then measure and compare the quantized "
         "variants in vLLM: which one should you serve?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
schemes_app = typer.Typer(help="List the built-in quantization schemes, or show one's recipe.",
                          invoke_without_command=True)
app.add_typer(schemes_app, name="schemes")

RUNTIME_PY = typer.Option(None, "--runtime-python", envvar="PTQ_DEPLOY_RUNTIME_PYTHON",
                          help="interpreter of the vLLM environment (default: the managed one)")
COMPRESS_PY = typer.Option(None, "--compress-python", envvar="PTQ_DEPLOY_COMPRESS_PYTHON",
                           help="interpreter of the llmcompressor environment (default: the managed one)")


def _version(value: bool):
    if value:
        out.print(f"ptq-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    pass


# ---------------------------------------------------------------- doctor
@app.command()
def doctor(
    runtime_python: Optional[str] = RUNTIME_PY,
    compress_python: Optional[str] = COMPRESS_PY,
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Check both environments, show the device and which schemes / KV-cache dtypes run here."""
    from ptq_deploy import doctor as doc

    rep = doc.run(runtime_python, compress_python)
    if as_json:
        out.print_json(rep.model_dump_json())
        raise typer.Exit(0 if rep.ok else 1)
    t = Table(title="environments")
    for c in ("role", "ok", "python", "key packages"):
        t.add_column(c)
    for e in rep.environments:
        pk = ", ".join(f"{k} {v}" for k, v in e.packages.items() if k != "ptq-deploy")
        t.add_row(e.role, "[green]yes[/green]" if e.ok else f"[red]no[/red] {e.problem}",
                  f"{e.python or '-'} ({e.version or '?'})", pk)
    out.print(t)
    out.print(f"device: [bold]{rep.hardware.summary()}[/bold]; vLLM build: {rep.vllm_build or 'none'}")
    if not rep.hardware.gpus:
        out.print(f"CPU flags: {' '.join(rep.hardware.cpu.flags)}")
    t = Table(title="what runs here (vLLM)")
    for c in ("scheme / kv-cache", "runs", "fast path", "kernel", "note"):
        t.add_column(c)
    for name, s in [*rep.schemes.items(), *((f"kv {k}", v) for k, v in rep.kv_cache.items())]:
        t.add_row(name, "[green]yes[/green]" if s.runnable else "[red]no[/red]",
                  "yes" if s.fast_path else "no", s.kernel, s.reason)
    out.print(t)
    raise typer.Exit(0 if rep.ok else 1)


# ---------------------------------------------------------------- schemes
@schemes_app.callback()
def schemes_list(ctx: typer.Context):
    """List the schemes (one YAML file each in schemes/)."""
    if ctx.invoked_subcommand:
        return
    from ptq_deploy import schemes

    t = Table(title="schemes")
    for c in ("name", "weights", "activations", "group", "calibration", "description"):
        t.add_column(c)
    for s in schemes.registry().values():
        t.add_row(s.name, s.weights, s.activations, str(s.group_size or "-"),
                  "yes" if s.calibration else "no", s.description)
    out.print(t)


@schemes_app.command("show")
def schemes_show(
    name: str,
    group_size: Optional[int] = typer.Option(None, help="override the group size"),
    kv_cache: str = typer.Option("none", help="none | fp8"),
):
    """Print a scheme's resolved llmcompressor recipe (YAML)."""
    from ptq_deploy import schemes

    s = schemes.get(name)
    r = s.resolve(group_size=group_size, kv_cache=kv_cache)
    out.print(f"# {s.name}: {s.description}\n# calibration: {r.needs_calibration}\n# hardware: {s.hardware_notes}")
    out.print(r.to_yaml() or "# no recipe: a plain bf16 copy of the model", markup=False)


# ---------------------------------------------------------------- model
@app.command()
def model(
    source: str = typer.Argument("default", help="'default' (embedded SmolLM2-135M-Instruct), a .gguf file, a dir or hub id"),
):
    """Prepare a model source: converts a GGUF (or the embedded default) to a safetensors checkpoint."""
    from ptq_deploy.models import resolve

    src = resolve(source)
    out.print(src.path)


# ---------------------------------------------------------------- compress
@app.command()
def compress(
    model: str = typer.Argument(..., help="local HF dir, hub id, .gguf file, or 'default'"),
    scheme: str = typer.Option("FP8-W8A8", "--scheme", "-s", help="scheme name (see `ptq-deploy schemes`)"),
    output: Path = typer.Option(..., "--output", "-o", help="output checkpoint directory"),
    recipe: Optional[Path] = typer.Option(None, help="your own llmcompressor recipe YAML instead of --scheme"),
    group_size: Optional[int] = typer.Option(None, help="override the group size of group-quantized schemes"),
    kv_cache: str = typer.Option("none", help="none | fp8 (calibrated FP8 KV-cache scales in the checkpoint)"),
    dataset: str = typer.Option("austen", help="calibration set: austen (bundled), ultrachat_200k, wikitext, open_platypus, or a file/dir"),
    num_samples: int = typer.Option(64, help="calibration samples"),
    max_seq_len: int = typer.Option(512, help="tokens per calibration sample"),
    seed: int = typer.Option(0),
    revision: Optional[str] = typer.Option(None, help="hub revision"),
    trust_remote_code: bool = typer.Option(False),
    calibration_dtype: str = typer.Option("auto", help="auto (fp32 on CPU, model dtype on GPU) | float32 | bfloat16 | float16"),
    device_map: Optional[str] = typer.Option(None, help="passed to from_pretrained (e.g. auto) for offloading"),
    pipeline: Optional[str] = typer.Option(None, help="llmcompressor pipeline: independent | sequential | basic | datafree"),
    threads: Optional[int] = typer.Option(None, help="torch threads for CPU calibration"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and plan, then exit"),
    compress_python: Optional[str] = COMPRESS_PY,
):
    """Compress MODEL with a scheme into a vLLM-loadable compressed-tensors checkpoint."""
    from ptq_deploy.compress import CompressConfig, Plan, compress as run

    cfg = CompressConfig(model=model, scheme=scheme, recipe_file=recipe, output=output, group_size=group_size,
                         kv_cache=kv_cache, dataset=dataset, num_samples=num_samples, max_seq_len=max_seq_len,
                         seed=seed, revision=revision, trust_remote_code=trust_remote_code,
                         calibration_dtype=calibration_dtype, device_map=device_map, pipeline=pipeline,
                         threads=threads, force=force, dry_run=dry_run, compress_python=compress_python)
    res = run(cfg)
    if isinstance(res, Plan):
        out.print(f"plan: {res.scheme.name} on {res.source.spec} ({res.source.kind}: {res.source.path}), "
                  f"{res.linear_layers} linear layers, calibration: "
                  f"{f'{dataset} x{num_samples} @ {max_seq_len} tokens' if res.resolved.needs_calibration else 'none'}, "
                  f"kv-cache: {kv_cache} -> {output}")
        out.print(res.resolved.to_yaml() or "# no recipe: plain bf16 copy", markup=False)
        return
    out.print(f"[green]wrote[/green] {res.output} ({res.scheme}, {res.checkpoint_bytes / 2**20:.1f} MiB, "
              f"{res.wall_time_s:.1f} s, peak RSS {res.peak_rss_bytes / 2**30:.2f} GiB)")


# ---------------------------------------------------------------- generate
@app.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="checkpoint directory"),
    prompt: list[str] = typer.Option(["The capital of France is"], "--prompt", "-p"),
    max_tokens: int = typer.Option(32),
    kv_cache_dtype: str = typer.Option("auto"),
    max_model_len: int = typer.Option(2048),
):
    """Greedy-generate from CHECKPOINT in vLLM and report the quantization vLLM chose."""
    from ptq_deploy import engine

    llm, info = engine.load(engine.EngineConfig(model=str(checkpoint), kv_cache_dtype=kv_cache_dtype,
                                                max_model_len=max_model_len))
    for g in engine.generate(llm, list(prompt), max_tokens):
        out.print(f"[bold]{g.prompt}[/bold]{g.text}")
    out.print(f"[dim]vLLM quantization={info.quantization} dtype={info.dtype} load {info.load_time_s:.1f} s[/dim]")


# ---------------------------------------------------------------- demo
@app.command()
def demo(
    workdir: Path = typer.Option(Path("checkpoints"), help="where demo checkpoints go"),
    schemes_: list[str] = typer.Option(["FP8-W8A8", "INT8-W8A8"], "--scheme", help="schemes to compress"),
    num_samples: int = typer.Option(32, help="calibration samples"),
    max_seq_len: int = typer.Option(256),
    compress_python: Optional[str] = COMPRESS_PY,
):
    """The main job on the embedded model: prepare it, compress it, generate from every variant in vLLM."""
    from ptq_deploy.demo import run_demo

    run_demo(workdir, schemes_, num_samples, max_seq_len, compress_python)


# ---------------------------------------------------------------- not built yet
def _not_yet(name: str, issue: str):
    def cmd(args: Optional[list[str]] = typer.Argument(None)):
        raise NotBuiltYet(f"`ptq-deploy {name}` is not built yet ({issue}); nothing was run")

    cmd.__doc__ = f"[not built yet] {issue}"
    return cmd


app.command("perf", help="[not built yet] measure load time, memory, latency, throughput and serving metrics in vLLM")(
    _not_yet("perf", "perf: vLLM latency/throughput/serving measurements"))
app.command("eval", help="[not built yet] lm-eval with the vLLM backend, recovery vs baseline")(
    _not_yet("eval", "eval: lm-eval through vLLM with recovery vs baseline"))
app.command("inspect", help="[not built yet] what is in a checkpoint and will it run here")(
    _not_yet("inspect", "inspect: checkpoint contents and hardware fit"))


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # click returns typer.Exit's code here
        sys.exit(rc if isinstance(rc, int) else 0)
    except PtqError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
    except __import__("click").ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except __import__("pydantic").ValidationError as e:
        err = e.errors()[0]
        console.print(f"[red]error:[/red] invalid {'.'.join(map(str, err['loc']))}: {err['msg']}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()


__all__ = ["app", "main", "json"]
