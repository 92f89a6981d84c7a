"""``ptq-deploy run``: the models x schemes matrix, step by step, resumable.

``run`` walks the plan (``suite.plan``), runs each pending step (``suite.steps``) and reports
progress as events to a listener (``suite.view.MatrixView`` on the console; any object with the
``SuiteListener`` methods). A failed compress or inspect blocks the rest of its cell; any other
failure is recorded and the matrix goes on. The exit code is the caller's (``SuiteSummary.failed``).
"""

from __future__ import annotations

import time
from typing import Literal

import yaml
from pydantic import BaseModel

from ptq_deploy import __version__
from ptq_deploy.hardware import detect
from ptq_deploy.results import atomic_write_text
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import PlannedStep, RunOptions, plan
from ptq_deploy.suite.steps import StepRunner


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


class SuiteListener:
    """The runner's events; a view overrides what it shows (this base shows nothing)."""

    def on_start(self, title: str, steps: list[PlannedStep]) -> None:
        """Before the first step: the whole plan."""

    def on_step_start(self, step: PlannedStep, elapsed_s: float) -> None:
        """A step starts (its state is ``running``)."""

    def on_step_end(self, step: PlannedStep, elapsed_s: float) -> None:
        """A step ended: ``ok`` or ``failed``, with its duration and reason."""

    def on_finish(self, elapsed_s: float) -> None:
        """After the last step, also after an interruption."""


def run(exp: Experiment, opts: RunOptions, listener: SuiteListener | None = None) -> SuiteSummary:
    hw = detect()
    steps = plan(exp, opts, hw)
    if opts.dry_run:
        return SuiteSummary(experiment=exp.name, results_dir=str(opts.results_dir), steps=steps, wall_time_s=0.0)
    listener = listener or SuiteListener()
    root = opts.results_dir
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "experiment.yaml", yaml.safe_dump(
        {**exp.model_dump(mode="json"), "ptq_deploy_version": __version__}, sort_keys=False), force=True)
    runner = StepRunner(exp, opts, hw)
    t0 = time.perf_counter()
    failed_cells: set[tuple[str, str]] = set()
    listener.on_start(exp.name, steps)
    try:
        for i, ps in enumerate(steps):
            if ps.state in ("not_runnable", "not_applicable"):
                runner.record_skipped(ps)
                continue
            if ps.state != "pending":
                continue
            if (ps.model, ps.cell) in failed_cells:
                ps.state, ps.reason = "blocked", "an earlier step of this cell failed"
                continue
            ps.state = "running"
            listener.on_step_start(ps, time.perf_counter() - t0)
            runner.run_step(ps)
            listener.on_step_end(ps, time.perf_counter() - t0)
            if ps.state == "failed" and ps.step in ("compress", "inspect"):
                failed_cells.add((ps.model, ps.cell))
            nxt = next((s for s in steps[i + 1:] if s.state == "pending"), None)
            if nxt is None or nxt.cell != ps.cell or nxt.step not in ("perf", "eval"):
                runner.close_engine()
    finally:
        runner.close_engine()
        listener.on_finish(time.perf_counter() - t0)
    return SuiteSummary(experiment=exp.name, results_dir=str(root), steps=steps, wall_time_s=time.perf_counter() - t0)
