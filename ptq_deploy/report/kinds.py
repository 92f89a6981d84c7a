"""Every result kind, read back through one discriminated union on ``kind``.

In the report layer, above every job (``ptq_deploy.results`` holds only the envelope each result module
imports): ``read_result`` needs every result module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from ptq_deploy.compress import CompressResult
from ptq_deploy.eval.result import EvalResult
from ptq_deploy.inspection.report import InspectReport
from ptq_deploy.kvcache.result import KVResult
from ptq_deploy.perf.result import PerfResult
from ptq_deploy.probe import ProbeResult
from ptq_deploy.results.envelope import read_json
from ptq_deploy.suite.layout import StepRecord

AnyResult = Annotated[Union[CompressResult, InspectReport, PerfResult, EvalResult, KVResult, StepRecord, ProbeResult],
                      Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(AnyResult)
KINDS = ("compress", "inspect", "perf", "eval", "kv", "suite-step", "probe")


def read_result(path: Path):
    """Any ptq-deploy result file (any schema version), as its typed model; one clear error otherwise."""
    return read_json(path, _ADAPTER.validate_json, f"ptq-deploy result ({', '.join(KINDS)})")
