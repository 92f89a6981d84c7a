"""``ptq-deploy run``: the models x schemes matrix, step by step, resumable.

Every step (compress -> inspect -> perf -> eval) is keyed by a content hash of its inputs and
writes its result and a :class:`~ptq_deploy.suite.layout.StepRecord` atomically when it finishes,
so a rerun skips finished steps and a crash or Ctrl-C loses nothing finished. A failed step is
recorded with its error and the suite moves on; the exit code is non-zero at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ptq_deploy import __version__, schemes
from ptq_deploy.errors import PtqError
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.results import atomic_write_json, atomic_write_text
from ptq_deploy.suite import layout
from ptq_deploy.suite.experiment import Experiment, ModelSpec
from ptq_deploy.support import kv_cache_support, scheme_support

State = Literal["done", "pending", "not_runnable", "blocked", "running", "ok", "failed"]


class RunOptions(BaseModel):
    results_dir: Path
    include_models: list[str] = []
    exclude_models: list[str] = []
    include_schemes: list[str] = []
    exclude_schemes: list[str] = []
    force: list[str] = []  # step names, or "all"
    dry_run: bool = False
    compress_python: str | None = None


class PlannedStep(BaseModel):
    model: str
    cell: str
    scheme: str
    kv_cache: str
    step: str
    key: str
    state: State
    reason: str | None = None
    backend: str | None = None  # eval steps: vllm | hf
    duration_s: float | None = None


class SuiteSummary(BaseModel):
    schema_version: int = 1
    kind: Literal["suite"] = "suite"
    experiment: str
    results_dir: str
    steps: list[PlannedStep]
    wall_time_s: float

    @property
    def failed(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.state == "failed"]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return (not include or name in include) and name not in exclude


def _runnable(scheme: str, kv: str, hw: HardwareInfo) -> tuple[bool, str | None]:
    sup = scheme_support(schemes.get(scheme), hw)
    if not sup.runnable:
        return False, sup.reason
    if kv != "none":
        k = kv_cache_support(kv, hw)
        if not k.runnable:
            return False, k.reason
    return True, None


def plan(exp: Experiment, opts: RunOptions, hw: HardwareInfo | None = None) -> list[PlannedStep]:
    hw = hw or detect()
    root = opts.results_dir
    models = [m for m in exp.models if _selected(m.name, opts.include_models, opts.exclude_models)]
    names = [s for s in exp.schemes if _selected(s, opts.include_schemes, opts.exclude_schemes)]
    if exp.baseline in exp.schemes and exp.baseline not in names and "eval" in exp.steps:
        names = [exp.baseline, *names]  # recovery needs the baseline cell
    names.sort(key=lambda s: s != exp.baseline)
    steps: list[PlannedStep] = []
    for m in models:
        model_steps: list[PlannedStep] = []
        need_hf_baseline = False
        for scheme in names:
            for kv in exp.kv_cache:
                if scheme == exp.baseline and kv != "none":
                    continue
                cell = layout.cell_name(scheme, kv)
                s = schemes.get(scheme)
                # the scheme's content (recipe included), not where its YAML file lives: a moved or freshly
                # cloned checkout keeps its finished steps
                ckey = _hash({"source": m.source, "trust": m.trust_remote_code,
                              "scheme": s.model_dump(exclude={"source"}),
                              "group": m.group_size if s.group_size else None, "kv": kv,
                              "calib": exp.compress.model_dump()})
                runnable, reason = _runnable(scheme, kv, hw)
                keys = {
                    "compress": ckey,
                    "inspect": _hash({"c": ckey, "step": "inspect"}),
                    "perf": _hash({"c": ckey, "perf": exp.perf, "len": m.max_model_len, "dtype": m.dtype}),
                    "eval": _hash({"c": ckey, "eval": exp.eval.model_dump(), "len": m.max_model_len,
                                   "dtype": m.dtype}),
                }
                for step in exp.steps:
                    ps = PlannedStep(model=m.name, cell=cell, scheme=scheme, kv_cache=kv, step=step,
                                     key=keys[step], state="pending")
                    if step == "perf" and not runnable:
                        ps.state, ps.reason = "not_runnable", f"not runnable here: {reason}"
                    if step == "eval":
                        ps.backend = "vllm"
                        if not runnable:
                            if exp.eval.fallback_backend and kv == "none":
                                ps.backend = exp.eval.fallback_backend
                                ps.key = _hash({"k": ps.key, "backend": ps.backend})
                                need_hf_baseline = True
                            else:
                                ps.state, ps.reason = "not_runnable", f"not runnable here: {reason}"
                    model_steps.append(ps)
        if need_hf_baseline and "eval" in exp.steps:
            base = next(p for p in model_steps if p.cell == exp.baseline and p.step == "eval")
            model_steps.insert(model_steps.index(base) + 1, base.model_copy(update={
                "step": "eval-hf", "backend": exp.eval.fallback_backend,
                "key": _hash({"k": base.key, "backend": exp.eval.fallback_backend})}))
        steps.extend(model_steps)
    for ps in steps:
        if ps.state != "pending":
            continue
        rec_path = layout.step_file(root, ps.model, ps.cell, ps.step)
        forced = "all" in opts.force or ps.step in opts.force
        if rec_path.is_file() and not forced:
            rec = layout.StepRecord.model_validate_json(rec_path.read_text())
            if rec.key == ps.key and rec.status in ("ok", "not_runnable"):
                ps.state, ps.duration_s = "done", rec.duration_s
    return steps


@contextlib.contextmanager
def _redirect_fds(log: Path):
    """Send everything a step prints (this process and its children) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Runner:
    def __init__(self, exp: Experiment, opts: RunOptions, hw: HardwareInfo):
        self.exp, self.opts, self.hw, self.root = exp, opts, hw, opts.results_dir
        self.models = {m.name: m for m in exp.models}
        self.engine = None  # (checkpoint, llm, info) shared by perf and eval of one cell

    # ----------------------------------------------------------------- steps
    def _ckpt(self, ps: PlannedStep) -> Path:
        return layout.checkpoint_dir(self.root, ps.model, ps.cell)

    def compress(self, ps: PlannedStep, m: ModelSpec):
        from ptq_deploy.compress import CompressConfig, compress

        s = schemes.get(ps.scheme)
        c = self.exp.compress
        return compress(CompressConfig(
            model=m.source, scheme=ps.scheme, output=self._ckpt(ps), kv_cache=ps.kv_cache,
            group_size=m.group_size if s.group_size else None, dataset=c.dataset, num_samples=c.num_samples,
            max_seq_len=c.max_seq_len, seed=c.seed, trust_remote_code=m.trust_remote_code, force=True,
            compress_python=self.opts.compress_python))

    def inspect(self, ps: PlannedStep, m: ModelSpec):
        from ptq_deploy.inspect import InspectConfig, inspect_checkpoint

        rep = inspect_checkpoint(InspectConfig(checkpoint=self._ckpt(ps), trust_remote_code=m.trust_remote_code))
        if not rep.ok:
            errors = [f.message for f in rep.findings if f.severity == "error"]
            raise PtqError(f"inspect found errors: {errors[0] if errors else 'see result'}")
        return rep

    def _engine(self, ps: PlannedStep, m: ModelSpec):
        from ptq_deploy import engine

        ck = str(self._ckpt(ps))
        if self.engine is None or self.engine[0] != ck:
            self.close_engine()
            llm, info = engine.load(engine.EngineConfig(model=ck, dtype=m.dtype, max_model_len=m.max_model_len))
            self.engine = (ck, llm, info)
        return self.engine[1], self.engine[2]

    def close_engine(self):
        if self.engine is not None:
            from ptq_deploy import engine

            engine.shutdown(self.engine[1])
            self.engine = None

    def perf(self, ps: PlannedStep, m: ModelSpec):
        from ptq_deploy.perf.config import PerfConfig
        from ptq_deploy.perf.runner import run_perf

        cfg = PerfConfig(**{"max_model_len": m.max_model_len, "dtype": m.dtype, **self.exp.perf,
                            "checkpoint": str(self._ckpt(ps)), "write": False})
        llm, info = self._engine(ps, m) if cfg.offline else (None, None)
        return run_perf(cfg, llm=llm, info=info)

    def eval(self, ps: PlannedStep, m: ModelSpec):
        from ptq_deploy.eval import EvalConfig, run_eval

        e = self.exp.eval
        cfg = EvalConfig(checkpoint=str(self._ckpt(ps)), tasks=e.tasks, limit=e.limit, num_fewshot=e.num_fewshot,
                         dtype=m.dtype, max_model_len=m.max_model_len, backend=ps.backend or "vllm", write=False)
        llm = self._engine(ps, m)[0] if cfg.backend == "vllm" else None
        return run_eval(cfg, llm=llm)

    # ----------------------------------------------------------------- driver
    def run_step(self, ps: PlannedStep) -> None:
        m = self.models[ps.model]
        started, t0 = layout.StepRecord.now(), time.perf_counter()
        result_path = layout.result_file(self.root, ps.model, ps.cell, ps.step)
        status, reason = "ok", None
        fn = {"compress": self.compress, "inspect": self.inspect, "perf": self.perf, "eval": self.eval,
              "eval-hf": self.eval}[ps.step]
        try:
            with _redirect_fds(layout.log_file(self.root, ps.model, ps.cell, ps.step)):
                res = fn(ps, m)
            atomic_write_json(result_path, res, force=True)
        except KeyboardInterrupt:
            raise
        except PtqError as e:
            status, reason = "failed", str(e)
        except Exception as e:  # a crash in one cell must not stop the matrix
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            status, reason = "failed", f"{type(e).__name__}: {msg}"
        rec = layout.StepRecord(model=ps.model, cell=ps.cell, scheme=ps.scheme, kv_cache=ps.kv_cache,
                                step=ps.step, key=ps.key, status=status, reason=reason, started_at=started,
                                duration_s=time.perf_counter() - t0,
                                result=str(result_path.relative_to(self.root)) if status == "ok" else None)
        atomic_write_json(layout.step_file(self.root, ps.model, ps.cell, ps.step), rec, force=True)
        ps.state, ps.reason, ps.duration_s = status, reason, rec.duration_s


def _record_not_runnable(root: Path, ps: PlannedStep) -> None:
    rec = layout.StepRecord(model=ps.model, cell=ps.cell, scheme=ps.scheme, kv_cache=ps.kv_cache, step=ps.step,
                            key=ps.key, status="not_runnable", reason=ps.reason, started_at=layout.StepRecord.now(),
                            duration_s=0.0)
    atomic_write_json(layout.step_file(root, ps.model, ps.cell, ps.step), rec, force=True)


SYMBOL = {"done": "[green]✓ done[/green]", "ok": "[green]✓[/green]", "pending": "[dim]·[/dim]",
          "running": "[yellow]▶ running[/yellow]", "failed": "[red]✗ failed[/red]",
          "not_runnable": "[magenta]n/a here[/magenta]", "blocked": "[dim]blocked[/dim]"}


def matrix_table(steps: list[PlannedStep], title: str, elapsed: float | None = None) -> Table:
    step_names = list(dict.fromkeys(s.step for s in steps))
    t = Table(title=title)
    t.add_column("model")
    t.add_column("cell")
    for s in step_names:
        t.add_column(s)
    cells = list(dict.fromkeys((s.model, s.cell) for s in steps))
    for model, cell in cells:
        row = []
        for name in step_names:
            ps = next((s for s in steps if s.model == model and s.cell == cell and s.step == name), None)
            if ps is None:
                row.append("")
                continue
            txt = SYMBOL[ps.state]
            if ps.duration_s and ps.state in ("ok", "done"):
                txt += f" {ps.duration_s:.0f}s"
            row.append(txt)
        t.add_row(model, cell, *row)
    if elapsed is not None:
        done = [s for s in steps if s.state in ("ok", "failed") and s.duration_s]
        todo = [s for s in steps if s.state in ("pending", "running")]
        eta = (sum(s.duration_s for s in done) / len(done) * len(todo)) if done else None
        t.caption = f"elapsed {elapsed:.0f} s" + (f", ETA ~{eta:.0f} s" if eta is not None else "")
    return t


def run(exp: Experiment, opts: RunOptions, console: Console | None = None) -> SuiteSummary:
    hw = detect()
    steps = plan(exp, opts, hw)
    console = console or Console(stderr=True)
    if opts.dry_run:
        return SuiteSummary(experiment=exp.name, results_dir=str(opts.results_dir), steps=steps, wall_time_s=0.0)
    root = opts.results_dir
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "experiment.yaml", yaml.safe_dump(
        {**exp.model_dump(mode="json"), "ptq_deploy_version": __version__}, sort_keys=False), force=True)
    runner = _Runner(exp, opts, hw)
    t0 = time.perf_counter()
    # the live view writes to a duplicate of the terminal; steps' own output goes to their logs
    term = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    live_console = Console(file=term, force_terminal=console.is_terminal, width=console.width)
    failed_cells: set[tuple[str, str]] = set()
    try:
        with Live(matrix_table(steps, exp.name, 0), console=live_console, refresh_per_second=2,
                  transient=False) as live:
            for i, ps in enumerate(steps):
                if ps.state == "not_runnable":
                    _record_not_runnable(root, ps)
                    continue
                if ps.state != "pending":
                    continue
                if (ps.model, ps.cell) in failed_cells:
                    ps.state, ps.reason = "blocked", "an earlier step of this cell failed"
                    continue
                ps.state = "running"
                live.update(matrix_table(steps, exp.name, time.perf_counter() - t0))
                runner.run_step(ps)
                if not live_console.is_terminal:  # no live redraws in a log: one line per step
                    live_console.print(f"[{time.perf_counter() - t0:6.0f} s] {ps.model}/{ps.cell}/{ps.step}: "
                                       f"{ps.state} ({ps.duration_s:.0f} s){': ' + ps.reason if ps.reason else ''}",
                                       highlight=False, soft_wrap=True)
                if ps.state == "failed" and ps.step in ("compress", "inspect"):
                    failed_cells.add((ps.model, ps.cell))
                nxt = next((s for s in steps[i + 1:] if s.state == "pending"), None)
                if nxt is None or nxt.cell != ps.cell or nxt.step not in ("perf", "eval"):
                    runner.close_engine()
                live.update(matrix_table(steps, exp.name, time.perf_counter() - t0))
    finally:
        runner.close_engine()
        term.close()
    return SuiteSummary(experiment=exp.name, results_dir=str(root), steps=steps,
                        wall_time_s=time.perf_counter() - t0)


__all__ = ["RunOptions", "PlannedStep", "SuiteSummary", "plan", "run", "matrix_table", "shutil"]
