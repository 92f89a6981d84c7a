"""EvalConfig: everything that decides what ``ptq-deploy eval`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
BUNDLED_TASKS = ("austen_cloze", "austen_ppl")
DEFAULT_TASKS = list(BUNDLED_TASKS)
# The seed's hub task set; works unchanged where the dataset hub is reachable:
#   EvalConfig(checkpoint=..., **HUB_TASKS)  /  --tasks gsm8k,hellaswag,piqa,arc_easy --num-fewshot 5 --limit 250
HUB_TASKS = {"tasks": ["gsm8k", "hellaswag", "piqa", "arc_easy"], "num_fewshot": 5, "limit": 250}


class EvalConfig(BaseModel):
    checkpoint: str = Field(description="checkpoint directory, hub id, .gguf file or 'default'")
    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS), min_length=1)
    num_fewshot: int | None = Field(None, ge=0, description="None: each task's own default")
    limit: int | float | None = Field(None, gt=0, description="examples per task (a fraction if < 1)")
    batch_size: int | Literal["auto"] = "auto"
    apply_chat_template: bool = False
    add_bos_token: bool = True
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=16, description="None: the model's, capped at 2048")
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    seed: int = 0
    backend: Literal["vllm", "hf"] = "vllm"
    include_path: list[Path] = Field(default_factory=list, description="extra lm-eval task directories")
    baseline: str | None = Field(None, description="baseline checkpoint, or a previous eval result JSON")
    log_samples: bool = Field(False, description="store lm-eval's full per-sample records in the result")
    bootstrap_iters: int = Field(1000, ge=0, description="paired-bootstrap / perplexity-stderr resamples")
    output_dir: Path = Path("eval_results")
    write: bool = True

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):
            v = [v]
        return [t.strip() for item in v for t in str(item).split(",") if t.strip()]

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
