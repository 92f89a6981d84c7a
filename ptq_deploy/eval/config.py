"""``ptq-deploy eval``'s options: ``EvalOptions`` (what is scored) and ``EvalConfig`` (+ checkpoint,
``EngineConfig``, backend and baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptq_deploy.engine import EngineConfig

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
BUNDLED_TASKS = ("austen_cloze", "austen_ppl")
DEFAULT_TASKS = list(BUNDLED_TASKS)
# The seed's hub task set; works unchanged where the dataset hub is reachable:
#   EvalConfig(checkpoint=..., **HUB_TASKS)  /  --tasks gsm8k,hellaswag,piqa,arc_easy --num-fewshot 5 --limit 250
HUB_TASKS = {"tasks": ["gsm8k", "hellaswag", "piqa", "arc_easy"], "num_fewshot": 5, "limit": 250}


def split_names(v) -> list[str]:
    """``"a,b"`` / ``["a,b", "c"]`` -> ``["a", "b", "c"]`` (comma-separated or repeated CLI options)."""
    if isinstance(v, str):
        v = [v]
    return [t.strip() for item in v for t in str(item).split(",") if t.strip()]


class EvalOptions(BaseModel):
    """What is scored and how (an experiment file's ``eval:`` holds these)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS), min_length=1,
                             description="lm-eval task names (bundled offline: austen_cloze, austen_ppl)")
    num_fewshot: int | None = Field(None, ge=0, description="None: each task's own default")
    limit: int | float | None = Field(None, gt=0, description="examples per task (a fraction if < 1)")
    batch_size: int | Literal["auto"] = "auto"
    apply_chat_template: bool = False
    add_bos_token: bool = True
    include_path: list[Path] = Field(default_factory=list, description="extra lm-eval task directories")
    bootstrap_iters: int = Field(1000, ge=0, description="paired-bootstrap / perplexity-stderr resamples")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        return split_names(v)

    @field_validator("limit")
    @classmethod
    def _limit(cls, v):
        if isinstance(v, float) and v >= 1:
            if not v.is_integer():
                raise ValueError("a limit >= 1 must be a whole number of examples")
            return int(v)
        return v

    def task_paths(self) -> list[Path]:
        return [TASKS_DIR, *self.include_path]


class EvalConfig(EvalOptions):
    """Every option of ``ptq-deploy eval``: the checkpoint, its engine settings, what is scored."""

    checkpoint: str = Field(description="checkpoint directory, hub id, .gguf file or 'default'")
    engine: EngineConfig = EngineConfig()
    backend: Literal["vllm", "hf"] = Field("vllm", description="vllm | hf (transformers; for schemes vLLM cannot run here)")
    baseline: str | None = Field(None, description="baseline checkpoint, or a previous eval result JSON")
    log_samples: bool = Field(False, description="store lm-eval's full per-sample records in the result")
    output_dir: Path = Field(Path("eval_results"), exclude=True)
    write: bool = Field(True, exclude=True)
