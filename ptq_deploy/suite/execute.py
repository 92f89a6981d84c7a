"""``ptq-deploy run``: the models x schemes matrix, step by step, resumable.

``run`` walks the plan (``suite.plan``), runs each pending step (``suite.steps``) and reports
progress as events to a listener (``suite.view.MatrixView`` on the console; any object with the
``SuiteListener`` methods, ``suite.events``). With ``opts.executor == "ray"`` the cells run as Ray
tasks instead (``suite.distributed``), with the same records and events; with ``opts.lanes > 1`` the
untimed steps of several cells run at once first (``suite.lanes``), then the perf steps one by one.
A failed compress or inspect blocks the rest of its cell; any other
failure is recorded and the matrix goes on. The exit code is the caller's (``SuiteSummary.failed``).
"""

from __future__ import annotations

import time

from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.suite import distributed, lanes, layout
from ptq_deploy.suite.events import SuiteListener, SuiteSummary
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import PlannedStep, RunOptions, check_sources, plan
from ptq_deploy.suite.steps import BLOCKED, StepRunner, blocks_cell


def run(exp: Experiment, opts: RunOptions, listener: SuiteListener | None = None) -> SuiteSummary:
    hw = detect()
    if opts.dry_run:
        steps = plan(exp, opts, hw)
        return SuiteSummary(experiment=exp.name, results_dir=str(opts.results_dir), steps=steps, wall_time_s=0.0)
    with layout.hold(opts.results_dir):  # one run per results dir; planned once it is held
        steps = plan(exp, opts, hw)
        check_sources(exp, steps)
        if opts.executor == "ray":
            return distributed.run_ray(exp, opts, listener)
        return _run_here(exp, opts, steps, hw, listener or SuiteListener())


def _run_here(exp: Experiment, opts: RunOptions, steps: list[PlannedStep], hw: HardwareInfo,
              listener: SuiteListener) -> SuiteSummary:
    if opts.lanes > 1:
        lanes.cpu_sets(opts.lanes)  # more lanes than CPUs: one line before anything runs
    root = opts.results_dir
    layout.write_experiment(root, exp)
    runner = StepRunner(exp, opts, hw)
    t0 = time.perf_counter()
    listener.on_start(exp.name, steps)
    try:
        if opts.lanes > 1:  # untimed steps first, several cells at once; the loop below finds only perf pending
            lanes.run_untimed(exp, opts, steps, opts.lanes, listener, t0)
        failed_cells = {(s.model, s.cell) for s in steps if blocks_cell(s)}
        for i, ps in enumerate(steps):
            if ps.state in ("not_runnable", "not_applicable"):
                runner.record_skipped(ps)
                continue
            if ps.state != "pending":
                continue
            if (ps.model, ps.cell) in failed_cells:
                ps.state, ps.reason = "blocked", BLOCKED
                continue
            ps.state = "running"
            listener.on_step_start(ps, time.perf_counter() - t0)
            runner.run_step(ps)
            listener.on_step_end(ps, time.perf_counter() - t0)
            if blocks_cell(ps):
                failed_cells.add((ps.model, ps.cell))
            runner.release_engine(ps, next((s for s in steps[i + 1:] if s.state == "pending"), None))
    finally:
        runner.close_engine()
        listener.on_finish(time.perf_counter() - t0)
    return SuiteSummary(experiment=exp.name, results_dir=str(root), steps=steps, wall_time_s=time.perf_counter() - t0)
