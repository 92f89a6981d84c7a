"""Where a suite run keeps its files (the report reads only these).

    RESULTS_DIR/
      experiment.yaml                      the experiment as run (resolved)
      checkpoints/<model>/<cell>/          compressed checkpoints (with ptq_deploy.json)
      checkpoints/<model>/<cell>.dequantized/  a weight-only cell's dense copy, where vLLM lacks its kernel
      steps/<model>/<cell>/<step>.json     one StepRecord per finished step (ok | failed | not_runnable |
                                           not_applicable: a quality-only scheme's perf)
      results/<model>/<cell>/<step>.json   the step's result object (CompressResult, InspectReport,
                                           PerfResult, EvalResult, KVResult) as JSON
      logs/<model>/<cell>/<step>.log       everything the step printed

``<cell>`` is the scheme name, plus ``+kv-fp8`` when the KV-cache option is not ``none``.
Steps: ``compress``, ``inspect``, ``perf``, ``eval`` (and ``eval-hf`` for a baseline evaluated with
the HF backend when an experiment scores cells vLLM cannot run with ``fallback: hf``), and
``kv`` (a scheme's quality-only KV-cache methods, one ``KVResult``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, model_validator

from ptq_deploy import __version__
from ptq_deploy.errors import UsageError
from ptq_deploy.results import Identity, ResultEnvelope, atomic_write_text
from ptq_deploy.timeutil import timestamp

Status = Literal["ok", "failed", "not_runnable", "not_applicable"]


class StepRecord(ResultEnvelope):
    """One finished step of a suite (its wall time is the step's duration)."""

    kind: Literal["suite-step"] = "suite-step"
    cell: str
    step: str
    key: str
    status: Status
    reason: str | None = None
    result: str | None = None  # path relative to RESULTS_DIR

    @model_validator(mode="before")
    @classmethod
    def _flat_identity(cls, data: Any) -> Any:
        """Accept ``model=, scheme=, kv_cache=, duration_s=`` (version 1's fields, and a handy constructor)."""
        if isinstance(data, dict) and "identity" not in data and "model" in data:
            data = dict(data)
            data["identity"] = Identity(model=data.pop("model"), scheme=data.pop("scheme"),
                                        kv_cache=data.pop("kv_cache", "none"))
            data["wall_time_s"] = data.pop("duration_s", data.get("wall_time_s", 0.0))
            data.setdefault("started_at", timestamp())
        return data

    @property
    def model(self) -> str:
        return self.identity.model

    @property
    def scheme(self) -> str:
        return self.identity.scheme

    @property
    def kv_cache(self) -> str:
        return self.identity.kv_cache

    @property
    def duration_s(self) -> float:
        return self.wall_time_s

    @staticmethod
    def now() -> str:
        return timestamp()


def cell_name(scheme: str, kv_cache: str) -> str:
    return scheme if kv_cache == "none" else f"{scheme}+kv-{kv_cache}"


def step_file(root: Path, model: str, cell: str, step: str) -> Path:
    return root / "steps" / model / cell / f"{step}.json"


def result_file(root: Path, model: str, cell: str, step: str) -> Path:
    return root / "results" / model / cell / f"{step}.json"


def log_file(root: Path, model: str, cell: str, step: str) -> Path:
    return root / "logs" / model / cell / f"{step}.log"


def checkpoint_dir(root: Path, model: str, cell: str) -> Path:
    return root / "checkpoints" / model / cell


def dequantized_dir(root: Path, model: str, cell: str) -> Path:
    """A cell's dense copy, scored in vLLM where its kernel does not run (activations quantized by its spec)."""
    return root / "checkpoints" / model / f"{cell}.dequantized"


def write_experiment(root: Path, exp: BaseModel) -> None:
    """``RESULTS_DIR/experiment.yaml``: the experiment as run (resolved), with this version."""
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "experiment.yaml", yaml.safe_dump(
        {**exp.model_dump(mode="json"), "ptq_deploy_version": __version__}, sort_keys=False), force=True)


LOCK_FILE = ".run.lock"


@contextmanager
def hold(root: Path):
    """Hold ``RESULTS_DIR`` for one ``run`` (an advisory ``flock``, released when the process ends however it
    ends); a second run on the same dir stops at once with one line naming the holder."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UsageError(f"{root} is in use by another `ptq-deploy run` ({holder}); wait for it or use "
                             "another --results-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {timestamp()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def records(root: Path) -> list[StepRecord]:
    return [StepRecord.model_validate_json(p.read_text()) for p in sorted((root / "steps").rglob("*.json"))]
