"""Where a suite run keeps its files (the report reads only these).

    RESULTS_DIR/
      experiment.yaml                      the experiment as run (resolved)
      checkpoints/<model>/<cell>/          compressed checkpoints (with ptq_deploy.json)
      steps/<model>/<cell>/<step>.json     one StepRecord per finished step (ok | failed | not_runnable)
      results/<model>/<cell>/<step>.json   the step's result object (CompressResult, InspectReport,
                                           PerfResult, EvalResult) as JSON
      logs/<model>/<cell>/<step>.log       everything the step printed

``<cell>`` is the scheme name, plus ``+kv-fp8`` when the KV-cache option is not ``none``.
Steps: ``compress``, ``inspect``, ``perf``, ``eval`` (and ``eval-hf`` for a baseline evaluated with
the HF backend, so that cells that vLLM cannot run here can still be compared like for like).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

STEPS = ("compress", "inspect", "perf", "eval", "eval-hf")
Status = Literal["ok", "failed", "not_runnable"]


class StepRecord(BaseModel):
    schema_version: int = 1
    kind: Literal["suite-step"] = "suite-step"
    model: str
    cell: str
    scheme: str
    kv_cache: str
    step: str
    key: str
    status: Status
    reason: str | None = None
    started_at: str
    duration_s: float
    result: str | None = None  # path relative to RESULTS_DIR

    @staticmethod
    def now() -> str:
        return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def records(root: Path) -> list[StepRecord]:
    return [StepRecord.model_validate_json(p.read_text()) for p in sorted((root / "steps").rglob("*.json"))]
