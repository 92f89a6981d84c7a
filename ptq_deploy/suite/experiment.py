"""Experiment files: models x schemes x KV-cache options, with compress, perf and eval settings (YAML).

The whole file is validated when it is loaded, before any step runs: an unknown or misspelt key, a
wrong type, an unknown scheme or a baseline that is not among the schemes is one line naming the key.
Bundled experiments (``ptq_deploy/data/experiments``) are found by name: ``ptq-deploy run smollm2-135m``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptq_deploy import DATA_DIR
from ptq_deploy.compress import CalibrationSettings, schemes
from ptq_deploy.engine import EngineConfig
from ptq_deploy.errors import UsageError, validation_line
from ptq_deploy.eval.config import EvalOptions
from ptq_deploy.kvcache import methods as kv_methods
from ptq_deploy.kvcache.config import KVSettings, offered_dtypes
from ptq_deploy.perf.config import PerfSettings
from ptq_deploy.report.settings import ReportSettings

EXPERIMENTS_DIR = DATA_DIR / "experiments"
Step = Literal["compress", "inspect", "perf", "eval", "kv"]
STEPS: tuple[str, ...] = get_args(Step)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[\w.-]+$", description="the model's name in results and reports (letters, digits, . _ -)")
    source: str = Field(description="local dir, hub id, .gguf file or 'default' (the embedded SmolLM2-135M)")
    trust_remote_code: bool = Field(False, description="let transformers run the model's own code (hub models)")
    group_size: int | None = Field(None, description="group size for group-quantized schemes on this model")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM settings for perf and eval")


class ExperimentEval(EvalOptions):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="the backend every cell is scored with: vllm, or hf (lm-eval's HF backend, e.g. on a "
                            "host without vLLM; the experiment's steps then leave out perf)")
    fallback: Literal["dequantized", "hf"] | None = Field(
        "dequantized", description="how a scheme vLLM cannot run here is scored: dequantized (in vLLM on a dense "
                                   "copy of its weights, its activations quantized as the scheme says), hf (lm-eval's "
                                   "HF backend on the checkpoint itself; the baseline too), or null (recorded as not "
                                   "runnable)")


class CalibrationOverride(BaseModel):
    """What one scheme's calibration changes of the experiment's (``compress: schemes: {NAME: ...}``)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = None
    num_samples: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=8)


class ExperimentCompress(CalibrationSettings):
    schemes: dict[str, CalibrationOverride] = Field(
        {}, description="per-scheme calibration, what differs from the settings above (e.g. INT8-W8A16: "
                        "{num_samples: 64, max_seq_len: 512}: a cheap GPTQ at full size while AWQ stays small)")

    def for_scheme(self, scheme: str) -> CalibrationSettings:
        """The calibration one scheme's compress step gets."""
        over = self.schemes[scheme].model_dump(exclude_none=True) if scheme in self.schemes else {}
        return CalibrationSettings(**(self.model_dump(exclude={"schemes"}) | over))


class ExperimentKV(KVSettings):
    # the quality-only KV methods of ``kv_cache`` run as one ``kv`` step per scheme listed here
    schemes: list[str] | None = Field(None, description="schemes whose checkpoints the quality-only KV-cache "
                                                        "methods are measured on (default: the baseline)")
    engine: list[str] = Field(default_factory=list, description="vLLM KV dtypes (fp8-uncalibrated, fp8_e5m2, ...) the "
                                                                "kv step measures in the engine without making them "
                                                                "cells; those in kv_cache are measured there too")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[\w.-]+$", description="the experiment's name: results go to results/<name>")
    models: list[ModelSpec] = Field(min_length=1, description="the models to compress and measure")
    schemes: list[str] = Field(min_length=1, description="scheme names (`ptq-deploy schemes`), the baseline among them")
    kv_cache: list[str] = Field(["none"], description="KV-cache methods (`ptq-deploy kv --list`): vLLM dtypes "
                                                      "become cells, quality-only methods one kv step per scheme")
    baseline: str = Field("BF16", description="the scheme every recovery and speedup is measured against")
    compress: ExperimentCompress = Field(default_factory=ExperimentCompress, description="the calibration set")
    perf: PerfSettings = Field(default_factory=PerfSettings, description="the vLLM speed and memory measurements")
    eval: ExperimentEval = Field(default_factory=ExperimentEval, description="the lm-eval quality measurements")
    kv: ExperimentKV = Field(default_factory=ExperimentKV, description="the long-context KV-cache measurements")
    steps: list[Step] = Field(list(STEPS), description="the steps each cell runs")
    max_slowdown: float | None = Field(
        30.0, gt=1, description="a scheme the probe measured at more than this many times the dense model's time "
                                "per token here (on its tiny model: an emulated kernel, not a slower one) gets no "
                                "perf or eval step, with that figure as the reason (at 30x, one eval step of the ready "
                                "experiment outlasts its whole budget); null runs it whatever it costs")
    report: ReportSettings = Field(default_factory=ReportSettings, description="the recommendation's constraints")

    @property
    def kv_quality_only(self) -> list[str]:
        """The quality-only KV methods (measured in transformers by the ``kv`` step)."""
        return [k for k in self.kv_cache if kv_methods.get(k).quality_only]

    @property
    def kv_step_methods(self) -> list[str]:
        """What the ``kv`` step measures on a scheme's checkpoint: the quality-only methods (transformers) and
        the vLLM KV dtypes that need no calibrated scales (in the engine, against its auto cache)."""
        vllm = [k for k in [*self.kv_vllm, *self.kv.engine]
                if k != "none" and not kv_methods.get(k, offered_dtypes()).calibrated]
        return [*self.kv_quality_only, *dict.fromkeys(vllm)]

    @property
    def kv_vllm(self) -> list[str]:
        """The KV options that are vLLM dtypes (``none`` included): one cell each."""
        return [k for k in self.kv_cache if not kv_methods.get(k).quality_only]

    @model_validator(mode="after")
    def _check(self) -> "Experiment":
        for s in self.schemes:
            schemes.get(s)
        used = set().union(*(schemes.get(s).modifier_names for s in self.schemes))
        for name in self.compress.modifier_args:
            if name not in used:
                close = difflib.get_close_matches(name, sorted(used), n=1)
                raise UsageError(f"compress.modifier_args: no scheme of this experiment has a {name}"
                                 + (f" (did you mean {close[0]}?)" if close else f" (its recipes have: "
                                                                                f"{', '.join(sorted(used))})"))
        self._among_schemes("compress.schemes", self.compress.schemes)
        for kv in self.kv_cache:
            try:
                kv_methods.get(kv)
            except UsageError as e:
                raise UsageError(f"kv_cache: {e}") from None
        if self.kv_quality_only and "none" not in self.kv_cache:
            self.kv_cache = ["none", *self.kv_cache]  # the kv step measures against the unquantized cache
        self._among_schemes("kv.schemes", self.kv.schemes or [])
        self._among_schemes("perf.serving_schemes", self.perf.serving_schemes or [])
        for kv in self.kv.engine:
            m = kv_methods.get(kv, offered_dtypes())
            if m.quality_only or m.baseline or m.calibrated:
                raise UsageError(f"kv.engine: {kv} is not a vLLM KV dtype the kv step can measure without calibrated "
                                 "scales (fp8-uncalibrated, fp8_e4m3, fp8_e5m2, ...)")
        if self.baseline not in self.schemes:
            raise UsageError(f"baseline: {self.baseline} must be one of the experiment's schemes "
                             f"({', '.join(self.schemes)})")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise UsageError("models: model names in an experiment must be unique")
        return self

    def _among_schemes(self, key: str, names) -> None:
        for s in names:
            if s not in self.schemes:
                raise UsageError(f"{key}: {s} is not one of the experiment's schemes ({', '.join(self.schemes)})")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc`` (for a did-you-mean on a misspelt key)."""
    for part in loc[:-1]:
        if isinstance(part, int) or str(part).isdigit():
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        args = getattr(ann, "__args__", None) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _one_line(e: ValidationError) -> str:
    line = validation_line(e)
    key, _, msg = line.partition(": ")
    if msg == "unknown key":
        loc = tuple(key.split("."))
        close = difflib.get_close_matches(loc[-1], _known_keys(Experiment, loc), n=1)
        return f"{key}: unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    return line


def resolve_path(path: Path | str) -> Path:
    """A file, or the name of a bundled experiment (``smollm2-135m`` or ``experiments/smollm2-135m.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (EXPERIMENTS_DIR / p.name, EXPERIMENTS_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    bundled = sorted(f.stem for f in EXPERIMENTS_DIR.glob("*.yaml"))
    raise UsageError(f"experiment file not found: {path} (bundled experiments: {', '.join(bundled)})")


def load(path: Path | str) -> Experiment:
    p = resolve_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"invalid YAML in {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"invalid experiment {p}: expected a mapping of keys")
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        raise UsageError(f"invalid experiment {p}: {_one_line(e)}") from None
    except UsageError as e:
        raise UsageError(f"invalid experiment {p}: {e}") from None
