"""``ptq-deploy run --executor ray``: the experiment's cells as Ray tasks, on whatever a Ray cluster has.

Each cell with pending steps is one Ray generator task (``_cell_task``): on its worker it runs the
cell's pending steps in order with ``StepRunner`` in a scratch results dir, and yields an event as
each step starts and the step's files (record, result, log, checkpoint) as it ends. The driver
writes those into its results dir (``transfer``: no shared filesystem assumed) and feeds the same
``SuiteListener`` events as the serial run. A cell whose compress step is done ships its checkpoint
to the task. Resources: on a cluster with GPUs, 1 for compression and tensor x pipeline x data
parallel size for the cell's engine; elsewhere ``cpus_per_cell`` CPUs. Ray schedules; tasks are
never retried (``max_retries=0``): a worker that dies mid-step leaves that step recorded failed with
the reason and the rest of its cell blocked, other cells go on, and a rerun resumes from the
driver's records. Nothing at eval time reads the baseline cell (recovery is computed by ``report``),
so baseline cells are only submitted first.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptq_deploy.errors import UsageError, one_line
from ptq_deploy.hardware import detect
from ptq_deploy.suite import layout, transfer
from ptq_deploy.suite.events import SuiteListener, SuiteSummary
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import PlannedStep, RayOptions, RunOptions, cell_engine, plan
from ptq_deploy.suite.steps import BLOCKED, StepRunner, blocks_cell
from ptq_deploy.timeutil import timestamp

ENGINE_STEPS = ("perf", "eval", "eval-hf")  # the steps that hold the cell's GPUs


def import_ray():
    """Ray (an optional extra), or one line saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'ray[default]' (into the runtime environment: "
                         "~/.cache/ptq-deploy/envs/runtime-<cpu|cuda>/bin/python -m pip install 'ray[default]')"
                         ) from None


# ---------------------------------------------------------------- on a worker
def _cell_task(exp: Experiment, opts: RunOptions, steps: list[PlannedStep], inputs: transfer.Files,
               written_in: str) -> Iterator[dict[str, Any]]:
    """Run one cell's pending ``steps`` here; yield ``{"start": i, "worker": ...}`` and ``{"end": step, "files": ...}``."""
    import ray  # present: this runs in a Ray worker

    scratch = Path(tempfile.mkdtemp(prefix="ptq-deploy-ray-")) / "results"
    runner = StepRunner(exp, opts.model_copy(update={"results_dir": scratch}), detect())
    worker = f"{ray.util.get_node_ip_address()} pid {os.getpid()}"
    try:
        transfer.write_files(scratch, inputs, written_in)
        snap = transfer.Snapshot(scratch)
        blocked = False
        for i, ps in enumerate(steps):
            if blocked:
                ps.state, ps.reason = "blocked", BLOCKED
                yield {"end": ps, "files": {}, "written_in": str(scratch)}
                continue
            yield {"start": i, "worker": worker}
            runner.run_step(ps)
            blocked = blocks_cell(ps)
            runner.release_engine(ps, steps[i + 1] if i + 1 < len(steps) else None)
            yield {"end": ps, "files": snap.changed(), "written_in": str(scratch)}
    finally:
        runner.close_engine()
        shutil.rmtree(scratch.parent, ignore_errors=True)


# ---------------------------------------------------------------- on the driver
def _init(ray, o: RayOptions) -> bool:
    """Connect to (``address``) or start a local cluster; True when this call started it."""
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level="WARNING")  # the steps' output goes to their logs
    if o.address:
        ray.init(address=o.address, **quiet)
    else:
        ray.init(num_cpus=o.num_cpus, include_dashboard=False, **quiet)
    return True


def _resources(ray, exp: Experiment, opts: RunOptions, steps: list[PlannedStep]) -> dict[str, Any]:
    """What a cell's task asks Ray for; refuses what no node of the cluster has."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    m = next(m for m in exp.models if m.name == steps[0].model)
    eng = cell_engine(m, steps[0].kv_cache)
    gpus = max([1 if s.step == "compress" else 0 for s in steps] +
               [eng.gpus_per_engine * eng.data_parallel_size if s.step in ENGINE_STEPS else 0 for s in steps])
    if not most_gpus:
        gpus = 0
    elif gpus > most_gpus:
        raise UsageError(f"models: {m.name}: tensor x pipeline x data parallel size needs {gpus} GPUs on one node; "
                         f"the largest node of the Ray cluster has {most_gpus:g}")
    cpus = opts.ray.cpus_per_cell if not gpus else 1
    if cpus > most_cpus:
        raise UsageError(f"--ray-cpus-per-cell {cpus}: the largest node of the Ray cluster has {most_cpus:g} CPUs")
    return {"num_cpus": cpus, "num_gpus": gpus}


class _Cell:
    """A submitted cell on the driver: its steps and the one running (with when it started)."""

    def __init__(self, steps: list[PlannedStep]):
        self.steps, self.running, self.started = steps, None, ("", 0.0)


def run_ray(exp: Experiment, opts: RunOptions, listener: SuiteListener | None = None) -> SuiteSummary:
    """``execute.run`` on a Ray cluster: same plan, records, events and summary."""
    ray = import_ray()
    hw = detect()
    steps = plan(exp, opts, hw)
    listener = listener or SuiteListener()
    root = opts.results_dir.resolve()
    opts = opts.model_copy(update={"results_dir": root})
    layout.write_experiment(root, exp)
    recorder = StepRunner(exp, opts, hw)  # records what the driver decides (skipped, crashed)
    cells: dict[tuple[str, str], list[PlannedStep]] = {}
    for ps in steps:
        if ps.state in ("not_runnable", "not_applicable"):
            recorder.record_skipped(ps)
        elif ps.state == "pending":
            cells.setdefault((ps.model, ps.cell), []).append(ps)
    started = _init(ray, opts.ray)
    try:
        order = sorted(cells.items(), key=lambda kv: kv[0][1] != exp.baseline)  # baseline cells first
        resources = [_resources(ray, exp, opts, todo) for _, todo in order]  # refused before any is submitted
    except BaseException:
        if started:
            ray.shutdown()
        raise
    task = ray.remote(_cell_task)
    t0 = time.perf_counter()
    running: list[tuple[Any, _Cell]] = []
    listener.on_start(exp.name, steps)
    try:
        for ((model, cell), todo), res in zip(order, resources):
            inputs = transfer.cell_inputs(root, model, cell) if todo[0].step != "compress" else {}
            gen = task.options(**res, max_retries=0, name=f"{model}/{cell}").remote(exp, opts, todo, inputs, str(root))
            running.append((gen, _Cell(todo)))
        while running:
            ready, _ = ray.wait([g for g, _ in running], num_returns=1)
            i = next(i for i, (g, _) in enumerate(running) if g is ready[0])
            gen, c = running[i]
            try:
                msg = ray.get(next(gen))
            except StopIteration:
                running.pop(i)
                continue
            except ray.exceptions.RayError as e:
                _crashed(ray, c, e, recorder, listener, time.perf_counter() - t0)
                running.pop(i)
                continue
            _handle(msg, c, root, listener, time.perf_counter() - t0)
    except BaseException:
        for gen, _ in running:
            with contextlib.suppress(Exception):
                ray.cancel(gen, force=True)
        raise
    finally:
        listener.on_finish(time.perf_counter() - t0)
        if started:
            ray.shutdown()
    return SuiteSummary(experiment=exp.name, results_dir=str(root), steps=steps, wall_time_s=time.perf_counter() - t0)


def _handle(msg: dict[str, Any], c: _Cell, root: Path, listener: SuiteListener, elapsed: float) -> None:
    """One event of a cell's task: a step started, or ended (its files written here first)."""
    if "start" in msg:
        ps = c.running = c.steps[msg["start"]]
        ps.state, ps.worker = "running", msg["worker"]
        c.started = (timestamp(), time.perf_counter())
        listener.on_step_start(ps, elapsed)
        return
    done: PlannedStep = msg["end"]
    ps = next(s for s in c.steps if s.step == done.step)
    transfer.write_files(root, msg["files"], msg["written_in"])
    ps.state, ps.reason, ps.duration_s = done.state, done.reason, done.duration_s
    if c.running is ps:
        c.running = None
        listener.on_step_end(ps, elapsed)


def _crashed(ray, c: _Cell, e: Exception, recorder: StepRunner, listener: SuiteListener, elapsed: float) -> None:
    """The cell's task died (its worker killed, its node lost, an error outside any step): the step it was
    running (else its next one) is recorded failed with the reason, the rest of the cell is blocked."""
    died = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)
    reason = ("worker died: " if isinstance(e, died) else "Ray task failed: ") + one_line(e, limit=300)
    ps = c.running or next((s for s in c.steps if s.state == "pending"), None)
    if ps is not None:
        when, t = c.started if c.running else (timestamp(), time.perf_counter())
        rec = recorder.record(ps, "failed", reason, when, time.perf_counter() - t)
        ps.state, ps.reason, ps.duration_s = "failed", reason, rec.duration_s
        listener.on_step_end(ps, elapsed)
    for s in c.steps:
        if s.state == "pending":
            s.state, s.reason = "blocked", BLOCKED
