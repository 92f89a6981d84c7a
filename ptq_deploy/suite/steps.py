"""What each suite step does (compress -> inspect -> perf -> eval, kv) and how a step's outcome is recorded.

``StepRunner.run_step`` sends everything a step prints to its log, writes its result and a
``StepRecord`` atomically, and turns any failure into a recorded reason (the matrix goes on).
perf and eval of one cell share one vLLM engine, loaded with the cell's engine settings.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ptq_deploy import engine, probe
from ptq_deploy.checkpoint.dequantize import dequantize
from ptq_deploy.compress import CompressConfig, compress, schemes
from ptq_deploy.errors import PtqError
from ptq_deploy.eval import EvalConfig, backend, run_eval
from ptq_deploy.hardware import HardwareInfo
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint
from ptq_deploy.kvcache import methods as kv_methods
from ptq_deploy.kvcache.config import KVConfig
from ptq_deploy.kvcache.runner import run_kv
from ptq_deploy.models import resolve
from ptq_deploy.perf import PerfConfig, run_perf
from ptq_deploy.results import Identity, atomic_write_json
from ptq_deploy.suite import layout, reuse
from ptq_deploy.suite.experiment import Experiment, ModelSpec
from ptq_deploy.suite.plan import DEQUANTIZED, PlannedStep, RunOptions, cell_engine, compress_kv
from ptq_deploy.timeutil import timestamp


@contextlib.contextmanager
def redirect_fds(log: Path):
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


BLOCKED = "an earlier step of this cell failed"


def blocks_cell(ps: PlannedStep) -> bool:
    """A failed compress or inspect leaves nothing for the rest of its cell."""
    return ps.state == "failed" and ps.step in ("compress", "inspect")


class StepRunner:
    def __init__(self, exp: Experiment, opts: RunOptions, hw: HardwareInfo):
        self.exp, self.opts, self.hw, self.root = exp, opts, hw, opts.results_dir
        self.models = {m.name: m for m in exp.models}
        self.engine = None  # (checkpoint, engine settings, llm, info) shared by perf and eval of one cell

    def _ckpt(self, ps: PlannedStep) -> Path:
        return layout.checkpoint_dir(self.root, ps.model, ps.cell)

    # ----------------------------------------------------------------- steps
    def compress(self, ps: PlannedStep, m: ModelSpec):
        """Compress, or reuse the kept checkpoint of an identical compress step (``suite.reuse``)."""
        s, out = schemes.get(ps.scheme), self._ckpt(ps)
        if reuse.store_dir() is not None and not {"compress", "all"} & set(self.opts.force):
            if (kept := reuse.fetch(ps.key, resolve(m.source), out)) is not None:
                print(f"[ptq-deploy] reused the checkpoint of {kept.reused_from} (same compress key {ps.key})")
                return kept
        res = compress(CompressConfig(
            model=m.source, scheme=ps.scheme, output=out, kv_cache=compress_kv(ps.kv_cache),
            group_size=m.group_size if s.group_adjustable else None, calibration=self.exp.compress.for_scheme(ps.scheme),
            trust_remote_code=m.trust_remote_code, force=True, compress_python=self.opts.compress_python))
        reuse.store(ps.key, res.checkpoint.source, out, res)
        return res

    def inspect(self, ps: PlannedStep, m: ModelSpec):
        rep = inspect_checkpoint(InspectConfig(checkpoint=self._ckpt(ps), trust_remote_code=m.trust_remote_code))
        if not rep.ok:
            raise PtqError(f"inspect found errors: {rep.errors[0].message}")
        return rep

    def _dequantized(self, ps: PlannedStep) -> Path:
        """The cell's dense copy (made once; a rerun of the cell's compress step replaces it)."""
        out = layout.dequantized_dir(self.root, ps.model, ps.cell)
        src = self._ckpt(ps)
        if not out.is_dir() or out.stat().st_mtime < src.stat().st_mtime:
            dequantize(src, out, force=True)
        return out

    def _engine(self, ps: PlannedStep, m: ModelSpec, ckpt: Path | None = None):
        ck, cfg = str(ckpt or self._ckpt(ps)), cell_engine(m, ps.kv_cache)
        if self.engine is None or self.engine[:2] != (ck, cfg):
            self.close_engine()
            llm, info = engine.load(ck, cfg, self.hw)
            self.engine = (ck, cfg, llm, info)
        return self.engine[2], self.engine[3]

    def release_engine(self, ps: PlannedStep, nxt: PlannedStep | None) -> None:
        """After ``ps``: close the engine unless ``nxt`` (the next pending step) is perf or eval of the same cell."""
        if nxt is None or (nxt.model, nxt.cell) != (ps.model, ps.cell) or nxt.step not in ("perf", "eval"):
            self.close_engine()

    def close_engine(self):
        if self.engine is not None:
            engine.shutdown(self.engine[2])
            self.engine = None

    def perf(self, ps: PlannedStep, m: ModelSpec):
        cfg = PerfConfig(**self.exp.perf.model_dump(), checkpoint=str(self._ckpt(ps)),
                         engine=cell_engine(m, ps.kv_cache), write=False)
        if cfg.serving_schemes is not None and ps.scheme not in cfg.serving_schemes:
            cfg.serving = False
        llm, info = self._engine(ps, m) if cfg.offline else (None, None)
        return run_perf(cfg, llm=llm, info=info, hw=self.hw)

    def eval(self, ps: PlannedStep, m: ModelSpec):
        ckpt = self._dequantized(ps) if ps.backend == DEQUANTIZED else self._ckpt(ps)
        options = self.exp.eval.model_dump(exclude={"fallback", "backend"})  # the step decides its backend
        cfg = EvalConfig(**options, checkpoint=str(ckpt), engine=cell_engine(m, ps.kv_cache),
                         backend="hf" if ps.backend == "hf" else "vllm", write=False)
        in_process = cfg.backend == "vllm" and cfg.engine.data_parallel_size < backend.SERVE_FROM_DATA_PARALLEL
        llm = self._engine(ps, m, ckpt)[0] if in_process else None
        return run_eval(cfg, llm=llm)

    def kv(self, ps: PlannedStep, m: ModelSpec):
        """The long-context KV track on this cell's checkpoint: quality-only methods through transformers, the
        vLLM KV dtypes that run here (the probe's answer; the others are said and left out) in the engine."""
        settings = self.exp.kv.model_dump(exclude={"schemes", "engine"})
        rules, names = probe.rules(self.hw), []
        for name in self.exp.kv_step_methods:
            dtype = kv_methods.get(name, rules.kv_dtypes).vllm_dtype
            if dtype and not (sup := rules.kv(dtype)).runnable:
                print(f"kv: {name} left out: not runnable here: {sup.reason}")
                continue
            names.append(name)
        return run_kv(KVConfig(**settings, checkpoint=str(self._ckpt(ps)), methods=["none", *names], write=False),
                      progress=print)

    # ----------------------------------------------------------------- one step, recorded
    def record(self, ps: PlannedStep, status: str, reason: str | None, started: str, duration_s: float,
               result: str | None = None) -> layout.StepRecord:
        rec = layout.StepRecord(identity=Identity(model=ps.model, scheme=ps.scheme, kv_cache=ps.kv_cache,
                                                  checkpoint=str(self._ckpt(ps))),
                                started_at=started, wall_time_s=duration_s, cell=ps.cell, step=ps.step, key=ps.key,
                                status=status, reason=reason, result=result)
        rec.write(layout.step_file(self.root, ps.model, ps.cell, ps.step), force=True)
        return rec

    def run_step(self, ps: PlannedStep) -> None:
        started, t0 = timestamp(), time.perf_counter()
        result_path = layout.result_file(self.root, ps.model, ps.cell, ps.step)
        status, reason = "ok", None
        fn = {"compress": self.compress, "inspect": self.inspect, "perf": self.perf, "eval": self.eval,
              "eval-hf": self.eval, "kv": self.kv}[ps.step]
        try:
            with redirect_fds(layout.log_file(self.root, ps.model, ps.cell, ps.step)):
                res = fn(ps, self.models[ps.model])
            atomic_write_json(result_path, res, force=True)
        except KeyboardInterrupt:
            raise
        except PtqError as e:
            status, reason = "failed", str(e)
        except Exception as e:  # a crash in one cell must not stop the matrix
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            status, reason = "failed", f"{type(e).__name__}: {msg}"
        rec = self.record(ps, status, reason, started, time.perf_counter() - t0,
                          str(result_path.relative_to(self.root)) if status == "ok" else None)
        ps.state, ps.reason, ps.duration_s = status, reason, rec.duration_s

    def record_skipped(self, ps: PlannedStep) -> None:
        """A step that cannot run here (``not_runnable``) or does not apply (``not_applicable``), with why."""
        self.record(ps, ps.state, ps.reason, timestamp(), 0.0)
