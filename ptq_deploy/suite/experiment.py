"""Experiment files: models x schemes x KV-cache options, with perf and eval settings (YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from ptq_deploy import schemes
from ptq_deploy.errors import UsageError
from ptq_deploy.report.settings import ReportSettings

REPO = Path(__file__).resolve().parent.parent.parent
EXPERIMENTS_DIR = REPO / "experiments"


class ModelSpec(BaseModel):
    name: str = Field(pattern=r"^[\w.-]+$")
    source: str = Field(description="local dir, hub id, .gguf file or 'default'")
    dtype: str = "auto"
    max_model_len: int = 1024
    trust_remote_code: bool = False
    group_size: int | None = Field(None, description="group size for group-quantized schemes on this model")


class CompressSettings(BaseModel):
    dataset: str = "austen"
    num_samples: int = 32
    max_seq_len: int = 256
    seed: int = 0


class EvalSettings(BaseModel):
    tasks: list[str] = ["austen_cloze", "austen_ppl"]
    limit: int | float | None = None
    num_fewshot: int | None = None
    # for schemes vLLM cannot run here: evaluate with lm-eval's HF backend (baseline too, so
    # recovery compares like with like), or None to record them as not runnable
    fallback_backend: str | None = "hf"


class Experiment(BaseModel):
    name: str
    models: list[ModelSpec] = Field(min_length=1)
    schemes: list[str] = Field(min_length=1)
    kv_cache: list[str] = ["none"]
    baseline: str = "BF16"
    compress: CompressSettings = CompressSettings()
    perf: dict[str, Any] = Field(default_factory=dict, description="PerfConfig fields")
    eval: EvalSettings = EvalSettings()
    steps: list[str] = ["compress", "inspect", "perf", "eval"]
    report: ReportSettings = ReportSettings()

    def check(self) -> "Experiment":
        for s in self.schemes:
            schemes.get(s)
        if self.baseline not in self.schemes:
            raise UsageError(f"the baseline scheme {self.baseline} must be in the experiment's schemes")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise UsageError("model names in an experiment must be unique")
        return self


def load(path: Path) -> Experiment:
    p = Path(path)
    if not p.is_file() and (EXPERIMENTS_DIR / p).is_file():
        p = EXPERIMENTS_DIR / p
    if not p.is_file():
        raise UsageError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
        return Experiment(**data).check()
    except yaml.YAMLError as e:
        raise UsageError(f"invalid YAML in {p}: {str(e).splitlines()[0]}") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"invalid experiment {p}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except TypeError as e:
        raise UsageError(f"invalid experiment {p}: {e}") from None
