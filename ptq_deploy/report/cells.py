"""Read a suite results dir (``ptq_deploy.suite.layout``): one typed ``Cell`` per model x cell, and the
experiment as run (its ``baseline`` and ``report:`` section).

Only the files under RESULTS_DIR are read: ``experiment.yaml``, ``steps/`` (which steps finished, failed
or cannot run here, and why) and ``results/`` (the step results). A result file that cannot be read or
validated becomes a problem line of its cell, never an exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ptq_deploy.errors import UsageError
from ptq_deploy.report.settings import ReportSettings
from ptq_deploy.report.kinds import read_result
from ptq_deploy.suite.layout import StepRecord, records, result_file

DEFAULT_BASELINE = "BF16"


class Cell(BaseModel):
    """Everything the results dir holds for one model x cell (typed results, None where absent)."""

    model: str
    cell: str
    scheme: str
    kv_cache: str
    steps: dict[str, StepRecord] = {}
    results: dict[str, Any] = {}  # step -> CompressResult | InspectReport | PerfResult | EvalResult
    problems: list[str] = []


# the result kind each step writes (read back through ``results.kinds.read_result``, any schema version)
RESULT_KINDS = {"compress": "compress", "inspect": "inspect", "perf": "perf", "eval": "eval", "eval-hf": "eval",
                "kv": "kv"}


def _experiment(root: Path) -> dict[str, Any]:
    f = Path(root) / "experiment.yaml"
    try:
        data = yaml.safe_load(f.read_text()) if f.is_file() else None
    except (OSError, yaml.YAMLError):
        data = None
    return data if isinstance(data, dict) else {}


def baseline_scheme(root: Path) -> str:
    """The experiment's baseline scheme (``experiment.yaml``), BF16 when it does not say."""
    return str(_experiment(root).get("baseline") or DEFAULT_BASELINE)


def experiment_settings(root: Path) -> ReportSettings | None:
    """The ``report:`` section of the results dir's ``experiment.yaml`` (None when it has none)."""
    section = _experiment(root).get("report")
    if section is None:
        return None
    try:
        return ReportSettings.model_validate(section)
    except ValidationError as e:
        e1 = e.errors()[0]
        raise UsageError(f"{Path(root) / 'experiment.yaml'}: report.{'.'.join(map(str, e1['loc']))}: "
                         f"{e1['msg']}") from None


def load_cells(root: Path) -> list[Cell]:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"results dir not found: {root}")
    try:
        recs = records(root)
    except (ValidationError, ValueError) as e:
        raise UsageError(f"{root}/steps holds a file that is not a step record: {str(e).splitlines()[0]}") from None
    if not recs:
        raise UsageError(f"no suite results in {root} (no steps/<model>/<cell>/<step>.json); "
                         "run `ptq-deploy run EXPERIMENT.yaml` first")
    cells: dict[tuple[str, str], Cell] = {}
    for r in recs:
        c = cells.setdefault((r.model, r.cell), Cell(model=r.model, cell=r.cell, scheme=r.scheme, kv_cache=r.kv_cache))
        c.steps[r.step] = r
        if r.status != "ok" or r.step not in RESULT_KINDS:
            continue
        path = root / r.result if r.result else result_file(root, r.model, r.cell, r.step)
        if not r.result and not path.is_file():
            continue  # a finished step that left no result object
        try:
            res = read_result(path)
        except UsageError as e:
            c.problems.append(f"{r.step}: {e}")
            continue
        if res.kind != RESULT_KINDS[r.step]:
            c.problems.append(f"{r.step}: {path.relative_to(root)} holds a {res.kind} result, not {RESULT_KINDS[r.step]}")
            continue
        c.results[r.step] = res
    return list(cells.values())
