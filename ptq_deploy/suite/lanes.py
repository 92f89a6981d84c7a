"""``ptq-deploy run --lanes N``: N cells' untimed work at once on a CPU host, timings kept clean.

On a CPU, llmcompressor's calibration uses about one core whatever it is given (measured on the 2-core
host: GPTQ on SmolLM2-135M took 116 s with one thread and 98 s with two), and scoring is throughput
work that does not care what runs beside it. So with ``lanes > 1`` each cell's untimed steps
(compress, inspect, eval, kv) run in order as one task in one of N worker processes, each pinned to
its share of the cores (affinity, OpenMP and vLLM's CPU thread binding); N cells go at once, the
costliest first. The timed steps (perf) wait until every lane is done, then run here one after
another with every core, exactly as in a serial run: no latency or throughput figure is measured
beside other work. Records, results and logs are the serial run's; a rerun resumes from them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from concurrent.futures import Future, ProcessPoolExecutor

from ptq_deploy.compress import schemes
from ptq_deploy.errors import UsageError, one_line
from ptq_deploy.hardware import detect
from ptq_deploy.suite.events import SuiteListener
from ptq_deploy.suite.experiment import Experiment
from ptq_deploy.suite.plan import PlannedStep, RunOptions
from ptq_deploy.suite.steps import BLOCKED, StepRunner, blocks_cell

TIMED = ("perf",)
# relative cost of a cell's untimed steps, to start the longest first, in units of one vLLM eval of the embedded
# model (~23 s); measured in the ready experiment on the 2-core AMX CPU (bench_ready_experiment records): GPTQ
# ~45 s plus ~5.5 ms per calibration token (67 s at 16 x 256, 225 s at 64 x 512), AWQ (grid 5) ~107 s at 16 x 256,
# the kv step ~122 s, anything else seconds
_PER_4K_TOKENS = {"GPTQModifier": (1.0, 1.0), "AWQModifier": (4.0, 0.6)}  # (fixed, per 4096 calibration tokens)
_STEP_COST = {"eval": 1.0, "eval-hf": 3.0, "kv": 5.0}


def cpu_sets(lanes: int) -> list[list[int]]:
    """This process's allowed CPUs split into ``lanes`` contiguous sets."""
    cpus = sorted(os.sched_getaffinity(0))
    if lanes > len(cpus):
        raise UsageError(f"--lanes {lanes}: this process may use {len(cpus)} CPUs; use at most {len(cpus)}")
    size = len(cpus) // lanes
    return [cpus[i * size:(i + 1) * size] for i in range(lanes)]


def _compress_cost(scheme: str, exp: Experiment) -> float:
    cal = exp.compress.for_scheme(scheme)
    k = cal.num_samples * cal.max_seq_len / 4096
    return max((a + b * k for a, b in (_PER_4K_TOKENS.get(m, (0.3, 0.0)) for m in schemes.get(scheme).modifier_names)),
               default=0.1)


def _cost(steps: list[PlannedStep], exp: Experiment) -> float:
    return sum(_compress_cost(ps.scheme, exp) if ps.step == "compress" else _STEP_COST.get(ps.step, 0.0)
               for ps in steps)


# ---------------------------------------------------------------- in a lane
_lane: dict = {}


def _init_lane(cpus: "mp.Queue", events: "mp.Queue", exp: Experiment, opts: RunOptions) -> None:
    mine = cpus.get()
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))  # torch here and in the compress worker it starts
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
    import torch

    torch.set_num_threads(len(mine))
    _lane.update(runner=StepRunner(exp, opts, detect()), events=events, cpus=mine)


def _run_cell(steps: list[PlannedStep]) -> list[PlannedStep]:
    runner, events = _lane["runner"], _lane["events"]
    failed = False
    try:
        for ps in steps:
            if failed:
                ps.state, ps.reason = "blocked", BLOCKED
                continue
            ps.state, ps.worker = "running", f"lane on CPU {','.join(map(str, _lane['cpus']))}"
            events.put(("start", ps))
            runner.run_step(ps)
            events.put(("end", ps))
            failed = blocks_cell(ps)
    finally:
        runner.close_engine()
    return steps


# ---------------------------------------------------------------- here
def run_untimed(exp: Experiment, opts: RunOptions, steps: list[PlannedStep], lanes: int,
                listener: SuiteListener, t0: float) -> None:
    """Run every pending untimed step of ``steps`` in ``lanes`` worker processes; updates ``steps`` in place."""
    cells: dict[tuple[str, str], list[PlannedStep]] = {}
    for ps in steps:
        if ps.state == "pending" and ps.step not in TIMED:
            cells.setdefault((ps.model, ps.cell), []).append(ps)
    if not cells:
        return
    by_id = {(s.model, s.cell, s.step): s for s in steps}
    ctx = mp.get_context("spawn")  # a fresh interpreter per lane: no forked torch/vLLM threads
    cpus, events = ctx.Queue(), ctx.Queue()
    for s in cpu_sets(lanes):
        cpus.put(s)

    def relay(kind: str, ps: PlannedStep) -> None:
        mine = by_id[(ps.model, ps.cell, ps.step)]
        mine.state, mine.reason, mine.duration_s, mine.worker = ps.state, ps.reason, ps.duration_s, ps.worker
        (listener.on_step_start if kind == "start" else listener.on_step_end)(mine, time.perf_counter() - t0)

    def drain(timeout: float) -> None:
        try:
            while True:
                relay(*events.get(timeout=timeout))
                timeout = 0
        except queue.Empty:
            pass

    order = sorted(cells.values(), key=lambda steps: _cost(steps, exp), reverse=True)
    with ProcessPoolExecutor(lanes, mp_context=ctx, initializer=_init_lane,
                             initargs=(cpus, events, exp, opts)) as pool:
        futures: dict[Future, list[PlannedStep]] = {pool.submit(_run_cell, cell): cell for cell in order}
        while any(not f.done() for f in futures):
            drain(0.5)
        drain(0)
        for f, cell in futures.items():
            try:
                done = f.result()
            except Exception as e:  # the lane process died (killed, out of memory): ``cell`` holds our copies
                for ps in cell:
                    if ps.state == "running":
                        ps.state, ps.reason = "failed", f"lane worker died: {one_line(e)}"
                    elif ps.state == "pending":
                        ps.state, ps.reason = "blocked", BLOCKED
                continue
            for ps in done:
                mine = by_id[(ps.model, ps.cell, ps.step)]
                mine.state, mine.reason, mine.duration_s, mine.worker = ps.state, ps.reason, ps.duration_s, ps.worker
