"""ptq-deploy command line: a thin shell over the library (every command = one library call)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import pydantic
import typer
from rich.markup import escape

from ptq_deploy import __version__
from ptq_deploy.compress import CalibrationSettings, CompressConfig
from ptq_deploy.engine import EngineConfig
from ptq_deploy.engine.kernels import brief_reason
from ptq_deploy.errors import PtqError, UsageError, validation_line
from ptq_deploy.eval.config import EvalConfig, EvalOptions
from ptq_deploy.inspection.report import InspectConfig
from ptq_deploy.kvcache.command import kv_cmd
from ptq_deploy.perf.config import PerfConfig, PerfSettings, parse_kv_args, parse_shapes, parse_slos
from ptq_deploy.report.settings import ReportSettings, parse_min_recovery
from ptq_deploy.suite.plan import RayOptions, RunOptions
from ptq_deploy.ui import console, out
from ptq_deploy.ui import option_default as _d
from ptq_deploy.ui import option_help as _h

# typer 0.29 labels every flag "<bool>" in --help as though it took a value; a flag shows no type (typer 0.28 did so)
_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _display_type(self, ctx)

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
    measure: bool = typer.Option(False, "--probe", help="measure what runs here first: vLLM loads a tiny model of "
                                 "each kernel family and KV-cache dtype (minutes; cached per vLLM build and hardware)"),
):
    """Check both environments, show the device and which schemes / KV-cache dtypes run here."""
    from ptq_deploy import doctor as doc
    from ptq_deploy.probe.run import run_probe

    if measure:
        run_probe(runtime_python, compress_python, progress=lambda m: console.print(f"[dim]probe: {m}[/dim]"))
    rep = doc.run(runtime_python, compress_python)
    if as_json:
        out.print_json(rep.model_dump_json())
    else:
        doc.render(rep, out)
    raise typer.Exit(0 if rep.ok else 1)


# ---------------------------------------------------------------- schemes
@schemes_app.callback()
def schemes_list(
    ctx: typer.Context,
    device: str = typer.Option("local", "--device", help="where to ask whether each runs: local (this machine, as "
                               "the probe measured it) | cpu | a named GPU (vLLM's rules, see `inspect --device`)"),
):
    """List the schemes (one YAML file each in the top-level schemes/) and whether vLLM runs each on a device."""
    if ctx.invoked_subcommand:
        return
    from ptq_deploy import probe
    from ptq_deploy.compress import schemes
    from ptq_deploy.hardware import detect
    from ptq_deploy.hardware.support import hardware_for, scheme_support

    hw = detect()
    target = hardware_for(device, hw)
    rules = probe.rules(hw) if device == "local" else None
    answers = {s.name: rules.scheme(s) if rules else scheme_support(s, target) for s in schemes.registry().values()}
    where = (f"here ({target.summary()}; {rules.source})" if rules
             else f"on {target.gpus[0].name if target.gpus else 'CPU'} (static rules, vLLM's kernel selection)")
    out.print(schemes.table(runs={n: _runs(a) for n, a in answers.items()}, where=where))


def _runs(support) -> str:
    if not support.runnable:
        return "no"
    return support.kernel + ("" if support.fast_path else " (slow path)")


@schemes_app.command("show")
def schemes_show(
    name: str,
    group_size: Optional[int] = typer.Option(None, help="override the group size"),
    kv_cache: str = typer.Option("none", help="none | fp8"),
):
    """Print a scheme's resolved llmcompressor recipe (YAML)."""
    from ptq_deploy.compress import schemes

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
    scheme: str = typer.Option(_d(CompressConfig, "scheme"), "--scheme", "-s", help="scheme name (see `ptq-deploy schemes`)"),
    output: Path = typer.Option(..., "--output", "-o", help="output checkpoint directory"),
    recipe: Optional[Path] = typer.Option(None, help="your own llmcompressor recipe YAML instead of --scheme"),
    group_size: Optional[int] = typer.Option(None, help="override the group size of group-quantized schemes"),
    kv_cache: str = typer.Option(_d(CompressConfig, "kv_cache"), help="none | fp8 (calibrated FP8 KV-cache scales in the checkpoint)"),
    dataset: str = typer.Option(_d(CalibrationSettings, "dataset"), help=_h(CalibrationSettings, "dataset")),
    num_samples: int = typer.Option(_d(CalibrationSettings, "num_samples"), help=_h(CalibrationSettings, "num_samples")),
    max_seq_len: int = typer.Option(_d(CalibrationSettings, "max_seq_len"), help=_h(CalibrationSettings, "max_seq_len")),
    seed: int = typer.Option(_d(CalibrationSettings, "seed")),
    revision: Optional[str] = typer.Option(None, help="hub revision"),
    trust_remote_code: bool = typer.Option(False),
    calibration_dtype: str = typer.Option(_d(CompressConfig, "calibration_dtype"), help="auto (fp32 on CPU, model dtype on GPU) | float32 | bfloat16 | float16"),
    device_map: Optional[str] = typer.Option(None, help="passed to from_pretrained (e.g. auto) for offloading"),
    pipeline: Optional[str] = typer.Option(None, help="llmcompressor pipeline: independent | sequential | basic | datafree"),
    sequential_targets: Optional[list[str]] = typer.Option(None, "--sequential-targets", help="module class names onloaded one at a time (llmcompressor sequential pipeline), e.g. LlamaDecoderLayer"),
    threads: Optional[int] = typer.Option(None, help="torch threads for CPU calibration"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and plan, then exit"),
    compress_python: Optional[str] = COMPRESS_PY,
):
    """Compress MODEL with a scheme into a vLLM-loadable compressed-tensors checkpoint."""
    from ptq_deploy.compress import CompressPlan
    from ptq_deploy.compress import compress as run

    cfg = CompressConfig(model=model, scheme=scheme, recipe_file=recipe, output=output, group_size=group_size,
                         kv_cache=kv_cache, calibration=CalibrationSettings(dataset=dataset, num_samples=num_samples,
                                                                            max_seq_len=max_seq_len, seed=seed),
                         revision=revision, trust_remote_code=trust_remote_code,
                         calibration_dtype=calibration_dtype, device_map=device_map, pipeline=pipeline,
                         sequential_targets=sequential_targets or None, threads=threads, force=force,
                         dry_run=dry_run, compress_python=compress_python)
    res = run(cfg)
    if isinstance(res, CompressPlan):
        out.print(res.describe())
        out.print(res.resolved.to_yaml() or "# no recipe: plain bf16 copy", markup=False)
        return
    out.print(f"[green]wrote[/green] {res.identity.checkpoint} ({res.identity.scheme}, "
              f"{res.checkpoint_bytes / 2**20:.1f} MiB, {res.wall_time_s:.1f} s, "
              f"peak RSS {res.peak_rss_bytes / 2**30:.2f} GiB)")


# ---------------------------------------------------------------- generate
@app.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="checkpoint directory"),
    prompt: list[str] = typer.Option(["The capital of France is"], "--prompt", "-p"),
    max_tokens: int = typer.Option(32),
    kv_cache_dtype: str = typer.Option(_d(EngineConfig, "kv_cache_dtype"), help=_h(EngineConfig, "kv_cache_dtype")),
    max_model_len: Optional[int] = typer.Option(_d(EngineConfig, "max_model_len"), help=_h(EngineConfig, "max_model_len")),
):
    """Greedy-generate from CHECKPOINT in vLLM and report the quantization vLLM chose."""
    from ptq_deploy import engine

    llm, info = engine.load(checkpoint, EngineConfig(kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len))
    for g in engine.generate(llm, list(prompt), max_tokens):
        out.print(f"[bold]{g.prompt}[/bold]{g.text}")
    out.print(f"[dim]vLLM quantization={info.quantization} dtype={info.dtype} load {info.load_time_s:.1f} s[/dim]")


# ---------------------------------------------------------------- quicklook
@app.command()
def quicklook(
    workdir: Path = typer.Option(Path("checkpoints"), help="where its checkpoints go"),
    schemes_: list[str] = typer.Option(["INT8-W8A8", "INT4-W4A16-RTN"], "--scheme", help="schemes to compress"),
    num_samples: int = typer.Option(_d(CalibrationSettings, "num_samples"), help=_h(CalibrationSettings, "num_samples")),
    max_seq_len: int = typer.Option(_d(CalibrationSettings, "max_seq_len"), help=_h(CalibrationSettings, "max_seq_len")),
    compress_python: Optional[str] = COMPRESS_PY,
):
    """Quick look (minutes, not the ready experiment of `make demo`): compress the embedded model and
    greedy-generate from each variant in vLLM."""
    from ptq_deploy.quicklook import run_quicklook

    run_quicklook(workdir, schemes_, num_samples, max_seq_len, compress_python)


# ---------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    checkpoint: str = typer.Argument(..., help="checkpoint directory, hub id, .gguf file or 'default'"),
    tasks: list[str] = typer.Option([",".join(_d(EvalOptions, "tasks"))], "--tasks", "-t",
                                    help="lm-eval task names (comma-separated or repeated); bundled offline: "
                                         "austen_cloze, austen_ppl; hub set: gsm8k,hellaswag,piqa,arc_easy"),
    num_fewshot: Optional[int] = typer.Option(_d(EvalOptions, "num_fewshot"), help=_h(EvalOptions, "num_fewshot")),
    limit: Optional[float] = typer.Option(_d(EvalOptions, "limit"), help=_h(EvalOptions, "limit")),
    batch_size: str = typer.Option(_d(EvalOptions, "batch_size"), help="auto or an integer"),
    apply_chat_template: bool = typer.Option(_d(EvalOptions, "apply_chat_template"), "--apply-chat-template"),
    add_bos_token: bool = typer.Option(_d(EvalOptions, "add_bos_token"), "--add-bos-token/--no-add-bos-token"),
    dtype: str = typer.Option(_d(EngineConfig, "dtype"), help=_h(EngineConfig, "dtype")),
    max_model_len: Optional[int] = typer.Option(_d(EngineConfig, "max_model_len"), help=_h(EngineConfig, "max_model_len")),
    kv_cache_dtype: str = typer.Option(_d(EngineConfig, "kv_cache_dtype"), help=_h(EngineConfig, "kv_cache_dtype")),
    kv_cache: Optional[str] = typer.Option(None, "--kv-cache", help="a KV-cache method by name (`ptq-deploy kv --list`): "
                                           "vLLM ones set --kv-cache-dtype; quality-only ones run with `ptq-deploy kv`"),
    tensor_parallel_size: int = typer.Option(_d(EngineConfig, "tensor_parallel_size")),
    data_parallel_size: int = typer.Option(_d(EngineConfig, "data_parallel_size")),
    gpu_memory_utilization: float = typer.Option(_d(EngineConfig, "gpu_memory_utilization")),
    seed: int = typer.Option(_d(EngineConfig, "seed")),
    backend: str = typer.Option(_d(EvalConfig, "backend"), help=_h(EvalConfig, "backend")),
    include_path: list[Path] = typer.Option([], "--include-path", help="extra lm-eval task directory (repeatable)"),
    baseline: Optional[str] = typer.Option(None, help=_h(EvalConfig, "baseline")),
    log_samples: bool = typer.Option(False, "--log-samples", help=_h(EvalConfig, "log_samples")),
    output_dir: Path = typer.Option(_d(EvalConfig, "output_dir"), help="where the result JSON goes"),
):
    """Score CHECKPOINT with lm-eval (vLLM backend) and, with --baseline, report recovery and whether it is real."""
    from ptq_deploy.eval import run_eval
    from ptq_deploy.eval.render import result_table
    from ptq_deploy.kvcache import methods as kv_methods

    if kv_cache is not None:
        m = kv_methods.get(kv_cache)
        if m.quality_only:
            raise UsageError(f"--kv-cache {m.name}: {kv_methods.QUALITY_ONLY_NOTE}; measure it with "
                             f"`ptq-deploy kv {checkpoint} -m {m.name}`")
        kv_cache_dtype = m.vllm_dtype
    engine_cfg = EngineConfig(dtype=dtype, max_model_len=max_model_len, kv_cache_dtype=kv_cache_dtype,
                              tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                              gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    cfg = EvalConfig(checkpoint=checkpoint, tasks=tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                     apply_chat_template=apply_chat_template, add_bos_token=add_bos_token, engine=engine_cfg,
                     backend=backend, include_path=include_path, baseline=baseline, log_samples=log_samples,
                     output_dir=output_dir)
    res = run_eval(cfg)
    out.print(result_table(res), width=None if out.is_terminal else max(out.width, 140))
    if res.path:
        out.print(f"[green]wrote[/green] {res.path}")


app.command("kv")(kv_cmd)


# ---------------------------------------------------------------- run (suite)
@app.command("run")
def run_suite(
    experiment: Path = typer.Argument(..., help="experiment YAML (models x schemes x kv-cache, perf and eval settings), "
                                                "or a bundled experiment's name (smollm2-135m)"),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", "-o", help="default: results/<experiment name>"),
    include_models: list[str] = typer.Option([], "--include-models", help="only these models (repeatable)"),
    exclude_models: list[str] = typer.Option([], "--exclude-models"),
    include_schemes: list[str] = typer.Option([], "--include-schemes", help="only these schemes (repeatable)"),
    exclude_schemes: list[str] = typer.Option([], "--exclude-schemes"),
    force: list[str] = typer.Option([], "--force", help="rerun this step even if done: compress|inspect|perf|eval|all"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print every step with what is already done, run nothing"),
    compress_python: Optional[str] = COMPRESS_PY,
    executor: str = typer.Option(_d(RunOptions, "executor"), "--executor",
                                 help="local | ray. local: one step after another here; ray: independent cells at once on a "
                                      "Ray cluster (pip install 'ray\\[default]'; see the README)"),
    lanes: int = typer.Option(_d(RunOptions, "lanes"), "--lanes", help=_h(RunOptions, "lanes")),
    ray_address: Optional[str] = typer.Option(_d(RayOptions, "address"), "--address", help=_h(RayOptions, "address")),
    ray_cpus: Optional[int] = typer.Option(_d(RayOptions, "num_cpus"), "--ray-cpus", help=_h(RayOptions, "num_cpus")),
    cpus_per_cell: int = typer.Option(_d(RayOptions, "cpus_per_cell"), "--ray-cpus-per-cell",
                                      help=_h(RayOptions, "cpus_per_cell")),
):
    """Run an experiment matrix (compress -> inspect -> perf -> eval); reruns skip finished steps.

    With --executor ray, independent cells run at once on a Ray cluster (--address auto|HOST:PORT, or a
    local one); results come back to this machine's results dir."""
    from ptq_deploy.suite import experiment as exp_mod
    from ptq_deploy.suite.execute import run
    from ptq_deploy.suite.view import MatrixView, matrix_table

    exp = exp_mod.load(experiment)
    opts = RunOptions(results_dir=results_dir or Path("results") / exp.name, include_models=include_models,
                      exclude_models=exclude_models, include_schemes=include_schemes,
                      exclude_schemes=exclude_schemes, force=force, dry_run=dry_run, compress_python=compress_python,
                      executor=executor, lanes=lanes, ray=RayOptions(address=ray_address, num_cpus=ray_cpus,
                                                        cpus_per_cell=cpus_per_cell))
    summary = run(exp, opts, listener=None if dry_run else MatrixView(console))
    if dry_run:
        out.print(matrix_table(summary.steps, f"plan: {exp.name} -> {opts.results_dir}"))
        return
    for s in summary.steps:
        if s.state in ("failed", "not_runnable", "not_applicable", "blocked"):
            out.print(f"{s.model}/{s.cell}/{s.step}: {s.state}: {brief_reason(s.reason or '')}", highlight=False)
    n_fail = len(summary.failed)
    out.print(f"{exp.name}: {sum(s.state in ('ok', 'done') for s in summary.steps)} steps done, "
              f"{n_fail} failed, results in {opts.results_dir} ({summary.wall_time_s:.0f} s)")
    if n_fail:
        raise typer.Exit(1)


# ---------------------------------------------------------------- perf
@app.command("perf")
def perf(
    checkpoint: Path = typer.Argument(..., help="checkpoint directory"),
    kv_cache_dtype: str = typer.Option(_d(EngineConfig, "kv_cache_dtype"), help=_h(EngineConfig, "kv_cache_dtype")),
    max_model_len: Optional[int] = typer.Option(_d(EngineConfig, "max_model_len"), help=_h(EngineConfig, "max_model_len")),
    tensor_parallel_size: int = typer.Option(_d(EngineConfig, "tensor_parallel_size"), "--tensor-parallel-size", "--tp"),
    dtype: str = typer.Option(_d(EngineConfig, "dtype"), help=_h(EngineConfig, "dtype")),
    gpu_memory_utilization: float = typer.Option(_d(EngineConfig, "gpu_memory_utilization")),
    enforce_eager: Optional[bool] = typer.Option(_d(EngineConfig, "enforce_eager"), "--enforce-eager/--no-enforce-eager",
                                                 help=_h(EngineConfig, "enforce_eager")),
    seed: int = typer.Option(_d(EngineConfig, "seed")),
    num_prompts: int = typer.Option(_d(PerfSettings, "num_prompts")),
    input_len: int = typer.Option(_d(PerfSettings, "input_len")),
    output_len: int = typer.Option(_d(PerfSettings, "output_len")),
    dataset: str = typer.Option(_d(PerfSettings, "dataset"), help=_h(PerfSettings, "dataset")),
    concurrency: Optional[str] = typer.Option(None, help="serving concurrency levels, comma-separated; "
                                              "default: the load sweep (doubling from 1 up to --max-concurrency "
                                              "until throughput saturates or a --goodput SLO breaks)"),
    max_concurrency: int = typer.Option(_d(PerfSettings, "max_concurrency"), help=_h(PerfSettings, "max_concurrency")),
    saturation: float = typer.Option(_d(PerfSettings, "saturation"), help=_h(PerfSettings, "saturation")),
    shape: list[str] = typer.Option([], "--shape", metavar="NAME[=IN:OUT]",
                                    help="a serving workload shape, swept on its own: chat, long_prompt, "
                                         "long_generation (256:128, 4096:256, 256:1024) or NAME=IN:OUT; repeatable "
                                         "(default: the workload of --input-len / --output-len)"),
    request_rate: Optional[float] = typer.Option(_d(PerfSettings, "request_rate"), help=_h(PerfSettings, "request_rate")),
    iterations: int = typer.Option(_d(PerfSettings, "iterations")),
    latency_ci: Optional[float] = typer.Option(_d(PerfSettings, "latency_ci"), help=_h(PerfSettings, "latency_ci")),
    warmup: int = typer.Option(_d(PerfSettings, "warmup"), help=_h(PerfSettings, "warmup")),
    goodput: list[str] = typer.Option([], "--goodput", help="SLO NAME:MS for goodput (ttft, tpot, e2el); repeatable"),
    engine_arg: list[str] = typer.Option([], "--engine-arg", help="extra vLLM engine arg KEY=VALUE; repeatable"),
    offline: bool = typer.Option(_d(PerfSettings, "offline"), "--offline/--no-offline", help=_h(PerfSettings, "offline")),
    serving: bool = typer.Option(_d(PerfSettings, "serving"), "--serving/--no-serving", help=_h(PerfSettings, "serving")),
    output_dir: Path = typer.Option(_d(PerfConfig, "output_dir"), help="where the JSON result goes"),
):
    """Measure CHECKPOINT in vLLM: load, memory, latency, throughput, serving (TTFT/TPOT/ITL), roofline."""
    from ptq_deploy.perf import run_perf
    from ptq_deploy.perf.report import summary_tables

    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()] if concurrency is not None else None
    except ValueError:
        raise UsageError(f"--concurrency {concurrency!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    engine_cfg = EngineConfig(dtype=dtype, max_model_len=max_model_len, kv_cache_dtype=kv_cache_dtype,
                              tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                              enforce_eager=enforce_eager, seed=seed, extra=parse_kv_args(engine_arg))
    cfg = PerfConfig(checkpoint=str(checkpoint), engine=engine_cfg, num_prompts=num_prompts, input_len=input_len,
                     output_len=output_len, dataset=dataset, concurrency=levels, max_concurrency=max_concurrency,
                     saturation=saturation, shapes=parse_shapes(shape), request_rate=request_rate,
                     iterations=iterations, latency_ci=latency_ci, warmup=warmup, goodput=parse_slos(goodput),
                     offline=offline, serving=serving, output_dir=output_dir)
    res = run_perf(cfg, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    for t in summary_tables(res):
        out.print(t)
    out.print(f"[green]wrote[/green] {res.path}")


# ---------------------------------------------------------------- inspect
@app.command("inspect")
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint directory (any HF checkpoint: compressed-tensors, GPTQ, AWQ, dense)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    device: str = typer.Option("local", "--device", help="local | cpu | a named GPU for a what-if: t4, a10, a10g, l4, l40, l40s, "
                               "a100-40gb, a100-80gb, h100-sxm, h100-pcie, h100-nvl, h200, b200 (data/devices.yaml)"),
    runtime: bool = typer.Option(_d(InspectConfig, "runtime"), "--runtime", help=_h(InspectConfig, "runtime")),
):
    """What is really in a checkpoint (format, proof of quantization, size) and will it run here. Exit 1 on errors."""
    from ptq_deploy.inspection import inspect_checkpoint, render

    rep = inspect_checkpoint(InspectConfig(checkpoint=checkpoint, device=device, runtime=runtime))
    if as_json:
        out.print_json(rep.model_dump_json())
    else:
        render(rep, out)
    raise typer.Exit(0 if rep.ok else 1)


# ---------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    results_dir: Path = typer.Argument(..., help="a suite results dir (`ptq-deploy run`)"),
    results_dir_b: Optional[Path] = typer.Argument(None, help="a second results dir: compare A and B side by side"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="where the report goes (default: RESULTS_DIR/report; "
                                          "with B: compare_A_vs_B beside A)"),
    min_recovery: Optional[list[str]] = typer.Option(
        None, "--min-recovery", metavar="[TASK=]FRACTION",
        help="recommend only schemes whose recovery vs the baseline (accuracy: candidate/baseline, perplexity: "
             "baseline/candidate) has its 95% interval's lower bound at or above FRACTION: for every quality measure, "
             "or TASK=FRACTION for one task (e.g. austen_ppl=0.97); repeatable. Default: the results' experiment.yaml "
             f"report: section, else {_d(ReportSettings, 'min_recovery')} for every task"),
    max_memory_gb: Optional[float] = typer.Option(
        _d(ReportSettings, "max_memory_gb"),
        help="recommend only schemes whose weights take at most this many GB (default: experiment.yaml, else none)"),
    min_throughput: Optional[float] = typer.Option(
        _d(ReportSettings, "min_throughput"),
        help="recommend only schemes reaching this many output tokens/s (default: experiment.yaml, else none)"),
    slo: list[str] = typer.Option([], "--slo", metavar="NAME:MS",
                                  help="a latency target of the throughput regime, p99 in ms: ttft, tpot or e2el "
                                       "(e.g. --slo ttft:2000 --slo tpot:100); repeatable. Default: experiment.yaml's "
                                       "report.slo, else none (each load curve's peak)"),
    capacity_context: Optional[int] = typer.Option(None, help="the capacity regime's context length in tokens "
                                                   f"(default: experiment.yaml, else {_d(ReportSettings, 'capacity_context')})"),
    formats: str = typer.Option("md,json,csv,html", "--format", help="comma-separated: md, json, csv, html"),
):
    """Leaderboard per model (Markdown/JSON/CSV/HTML + plots) and a recommendation, from result files alone."""
    from ptq_deploy.report import build_report, compare_reports, parse_formats, write_comparison, write_report
    from ptq_deploy.report.compare import conclusions
    from ptq_deploy.report.console import print_report

    fmts = parse_formats(formats)
    default, by_task = parse_min_recovery(min_recovery)
    given = {"min_recovery": default, "min_recovery_by_task": by_task, "max_memory_gb": max_memory_gb,
             "min_throughput": min_throughput, "slo": parse_slos(slo, option="--slo"),
             "capacity_context": capacity_context}
    rep = build_report(results_dir, **given)
    if results_dir_b is not None:
        comp = compare_reports(rep, build_report(results_dir_b, **given))
        for line in conclusions(comp):
            out.print(line, highlight=False, markup=False)
        default = results_dir.resolve().parent / f"compare_{results_dir.resolve().name}_vs_{results_dir_b.resolve().name}"
        paths = write_comparison(comp, output or default, fmts)
    else:
        print_report(rep, out)
        paths = write_report(rep, output or results_dir / "report", fmts)
    for p in paths:
        out.print(f"[green]wrote[/green] {p}")


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # click returns typer.Exit's code here
        sys.exit(rc if isinstance(rc, int) else 0)
    except PtqError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
    except typer.TyperException as e:  # typer's own click: a bad option, a missing argument, an unknown command
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx else ""
        console.print(f"[red]error:[/red] {escape(e.format_message())}{hint}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except pydantic.ValidationError as e:
        console.print(f"[red]error:[/red] invalid {escape(validation_line(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

