"""What a compression is asked to do (``CompressConfig``, its calibration) and what the compress-environment
worker receives and returns (``WorkerJob`` / ``WorkerResult``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ptq_deploy.checkpoint.grid import FakeQuant, FakeQuantSpec
from ptq_deploy.data import DEFAULT_DATASET, CalibrationInfo
from ptq_deploy.models import ModelSource
from ptq_deploy.provenance import Provenance


class CalibrationSettings(BaseModel):
    """The calibration set: the same defaults for ``ptq-deploy compress`` and experiment files."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(DEFAULT_DATASET, description="austen (bundled), ultrachat_200k, wikitext, "
                                                      "open_platypus, or a file/dir")
    num_samples: int = Field(64, ge=1, description="calibration samples")
    max_seq_len: int = Field(512, ge=8, description="tokens per calibration sample")
    seed: int = 0
    modifier_args: dict[str, dict[str, Any]] = Field(
        {}, description="extra arguments of a recipe's modifiers, by modifier name, for the schemes whose recipe "
                        "has it (e.g. AWQModifier: {n_grid: 10}, a CPU-sized AWQ grid search); written into the "
                        "checkpoint's recipe")


class CompressConfig(BaseModel):
    """Everything that decides what ``compress`` produces (run-control flags are not recorded)."""

    model: str = Field(description="local HF dir, hub id, .gguf file, or 'default'")
    scheme: str = "FP8-W8A8"
    recipe_file: Path | None = None
    output: Path
    group_size: int | None = None
    kv_cache: Literal["none", "fp8"] = "none"
    calibration: CalibrationSettings = CalibrationSettings()
    revision: str | None = None
    trust_remote_code: bool = False
    calibration_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: str | None = None
    pipeline: Literal["independent", "sequential", "basic", "datafree"] | None = None
    sequential_targets: list[str] | None = None
    threads: int | None = None
    force: bool = Field(False, exclude=True)
    dry_run: bool = Field(False, exclude=True)
    compress_python: str | None = Field(None, exclude=True)


class WorkerJob(BaseModel):
    """What the compress-environment worker receives (a resolved, self-contained plan)."""

    source: ModelSource
    scheme: str
    recipe: dict[str, Any] | None
    kv_cache: str
    needs_calibration: bool
    calibration: CalibrationSettings
    trust_remote_code: bool
    calibration_dtype: str
    device_map: str | None
    pipeline: str | None
    sequential_targets: list[str] | None
    threads: int | None
    work_dir: Path
    fake_quant: FakeQuantSpec | None = None  # pot / apot instead of an llmcompressor recipe


class WorkerResult(BaseModel):
    ok: bool
    error: str | None = None
    exit_code: int = 0
    calibration: CalibrationInfo | None = None
    wall_time_s: float = 0.0
    calibration_time_s: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None
    provenance: Provenance | None = None
    fake_quant: FakeQuant | None = None
