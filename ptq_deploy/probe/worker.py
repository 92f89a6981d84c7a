"""The probe's subprocess: ``python -m ptq_deploy.probe.worker JOBS.json EVENTS.jsonl`` (runtime environment);
``--kv-dtypes`` prints vLLM's own KV-cache dtype choices instead.

Imports vLLM once, then for each job loads its checkpoint in vLLM (no preflight: vLLM itself is asked),
walks the Linear layers for the kernel vLLM picked and generates two tokens. Each step appends one JSON
line to EVENTS (``ready``, ``start``, ``done`` with a ``CaseResult``), so the parent (``probe.run``)
can hold each case to its time limit and restart a worker after a crash.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy import engine
from ptq_deploy.engine.kernels import (main_kernel, vllm_attention_backends, vllm_attention_kv_dtypes,
                                       vllm_linear_kernels)
from ptq_deploy.engine.load import LoadFailed
from ptq_deploy.errors import one_line
from ptq_deploy.hardware import detect
from ptq_deploy.probe import CaseResult, ProbeCase

PROBE_MAX_MODEL_LEN = 256
PROBE_KV_BYTES = 256 * 2**20  # GPU: a small KV cache instead of gpu_memory_utilization of the whole device
PROMPT = "It is a truth universally acknowledged"
TIMED_TOKENS, TIMED_RUNS = 8, 3  # each case's speed, against the dense case's (``Rules.slowdown``): the best run
ERROR_CHARS = 1000  # vLLM's kernel-selection errors list every kernel's reason on one long line


class NotDeclared(Exception):
    """The attention backend vLLM picked does not declare the KV-cache dtype asked of it."""


class Job(BaseModel):
    case: ProbeCase
    checkpoint: str


def emit(out: Path, event: str, **data) -> None:
    with out.open("a") as f:
        f.write(json.dumps({"event": event, **data}) + "\n")


def _timed_generation(llm) -> float:
    """Milliseconds per generated token of one greedy request (its prefill included)."""
    t0 = time.perf_counter()
    gen = engine.generate(llm, [PROMPT], max_tokens=TIMED_TOKENS)[0]
    return (time.perf_counter() - t0) * 1e3 / max(1, len(gen.token_ids))


def run_case(job: Job, hw) -> CaseResult:
    """Load, read the kernels, generate; never raises (the failure and its phase are the result)."""
    extra = {"kv_cache_memory_bytes": PROBE_KV_BYTES} if hw.gpus else {}
    cfg = engine.EngineConfig(max_model_len=PROBE_MAX_MODEL_LEN, kv_cache_dtype=job.case.kv_cache_dtype,
                              enforce_eager=True, extra=extra)
    t0, phase, llm = time.perf_counter(), "load", None
    res = CaseResult(**job.case.model_dump(), runnable=None, phase="load")
    try:
        llm, info = engine.load(job.checkpoint, cfg, hw, check=False)
        phase = "kernels"
        res.kv_cache_dtype_used = info.kv_cache_dtype
        for part in llm.apply_model(vllm_linear_kernels):
            for k, n in part.items():
                res.linear_kernels[k] = res.linear_kernels.get(k, 0) + n
        attention = {k for part in llm.apply_model(vllm_attention_backends) for k in part}
        res.attention = ", ".join(sorted(attention)) or None
        res.kernel = res.attention if job.case.key.startswith("kv-") else main_kernel(res.linear_kernels)
        if job.case.kv_cache_dtype != "auto":  # vLLM may load a dtype its attention backend does not declare
            declared = {k: v for part in llm.apply_model(vllm_attention_kv_dtypes) for k, v in part.items()}
            refusing = {k: v for k, v in declared.items() if v and job.case.kv_cache_dtype not in v}
            if refusing:
                name, dtypes = next(iter(refusing.items()))
                raise NotDeclared(f"{name} does not declare kv_cache_dtype {job.case.kv_cache_dtype} (it declares "
                                  f"{', '.join(dtypes)}); vLLM loaded it without refusing, so what the cache holds "
                                  "is not what was asked")
        phase = "generate"
        engine.generate(llm, [PROMPT], max_tokens=2)  # every shape once: the timed run below is warm
        res.ms_per_token = min(_timed_generation(llm) for _ in range(TIMED_RUNS))
        res.runnable, res.phase = True, "done"
    except LoadFailed as e:
        res.runnable, res.phase, res.error = False, phase, e.error
    except Exception as e:  # what vLLM raised while running it: that is the measurement
        res.runnable, res.phase, res.error = False, phase, one_line(e, ERROR_CHARS)
    finally:
        if llm is not None:
            engine.shutdown(llm)
    res.seconds = time.perf_counter() - t0
    return res


def kv_dtypes() -> list[str]:
    """vLLM's own ``kv_cache_dtype`` choices (``--kv-dtypes``: printed as JSON)."""
    from typing import get_args

    from vllm.config.cache import CacheDType

    return list(get_args(CacheDType))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--kv-dtypes"]:
        print(json.dumps(kv_dtypes()))
        return 0
    jobs = [Job.model_validate(j) for j in json.loads(Path(argv[0]).read_text())]
    out = Path(argv[1])
    hw = detect()
    t0 = time.perf_counter()
    engine.apply_environment(engine.resolve(jobs[0].checkpoint, engine.EngineConfig(), hw))
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model ships a function to GPU workers
    import vllm  # heavy: once, after the environment is set, for every job

    emit(out, "ready", import_s=time.perf_counter() - t0, vllm_version=vllm.__version__)
    for job in jobs:
        emit(out, "start", key=job.case.key)
        emit(out, "done", result=run_case(job, hw).model_dump())
    return 0


if __name__ == "__main__":
    sys.exit(main())
