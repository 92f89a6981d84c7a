"""Synthetic suite results for the report tests: step records and result files written as the suite writes
them (``put``), with eval results built from per-document values so that the paired bootstrap measures
the intervals (accuracy: 0/1 answers; perplexity: (loglikelihood, words) per document)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ptq_deploy import stats
from ptq_deploy.eval import recovery
from ptq_deploy.eval.config import EvalConfig
from ptq_deploy.eval.result import EvalResult, EvalSettings, MetricValue, PerSample, TaskResult
from ptq_deploy.hardware import CPUInfo, HardwareInfo
from ptq_deploy.perf.config import PerfConfig
from ptq_deploy.perf.memory import MemoryStats
from ptq_deploy.perf.offline import ThroughputStats, TokenCheck
from ptq_deploy.perf.result import PerfResult
from ptq_deploy.perf.workload import WorkloadInfo
from ptq_deploy.provenance import Provenance
from ptq_deploy.results import Identity, atomic_write_json
from ptq_deploy.stats import Summary
from ptq_deploy.suite.layout import StepRecord, result_file, step_file

PPL_DOCS, PPL_WORDS = 24, 370  # austen_ppl: 24 documents of ~370 words
# the ``cli`` fixture runs the installed entry point: make it import this checkout (a worktree too)
CLI_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def put(root: Path, model: str, cell: str, step: str, result=None, status: str = "ok", reason: str | None = None,
        scheme: str | None = None, kv: str = "none") -> None:
    rel = None
    if result is not None:
        path = result_file(root, model, cell, step)
        atomic_write_json(path, result, force=True)
        rel = str(path.relative_to(root))
    rec = StepRecord(model=model, cell=cell, scheme=scheme or cell.split("+")[0], kv_cache=kv, step=step, key="test",
                     status=status, reason=reason, started_at=StepRecord.now(), duration_s=1.5, result=rel)
    atomic_write_json(step_file(root, model, cell, step), rec, force=True)


# ---------------------------------------------------------------- per-document values
def answers(n: int, correct: int, gains: int = 0, losses: int = 0) -> list[float]:
    """0/1 answers: the baseline's ``correct`` of ``n``, then ``gains`` of its wrong ones right and ``losses``
    of its right ones wrong (the discordant pairs the paired bootstrap sees)."""
    a = [1.0] * correct + [0.0] * (n - correct)
    for i in range(losses):
        a[i] = 0.0
    for i in range(gains):
        a[correct + i] = 1.0
    return a


def _patterns(n: int, k: int, seed: int = 7) -> np.ndarray:
    """``k`` fixed per-document patterns, orthonormal, mean 0, unit variance."""
    m = np.column_stack([np.ones(n), np.random.default_rng(seed).normal(size=(n, k))])
    q, _ = np.linalg.qr(m)
    return q[:, 1:] * math.sqrt(n)


def documents(ppl: float, delta: float = 0.0, se: float = 0.0, n: int = PPL_DOCS) -> list[list[float]]:
    """(loglikelihood, words) per document: word perplexity ``ppl + delta`` overall, documents spread around
    it, the per-document shift vs ``documents(ppl)`` varying so that the paired bootstrap stderr of the
    delta is about ``se``."""
    spread, shift = _patterns(n, 2).T
    base = math.log(ppl) + 0.05 * spread  # per-document log-perplexity of the baseline
    level = math.log((ppl + delta) / ppl)
    # the bootstrap sees the baseline spread through the ratio, and its plug-in variance: correct both
    own = max(se ** 2 - (delta * 0.05) ** 2 / n, 0.0)
    sd = math.sqrt(own * n / (n - 1) * n) / (ppl + delta)
    logp = base + level + sd * shift
    return [[float(-lp * PPL_WORDS), float(PPL_WORDS)] for lp in logp]


# ---------------------------------------------------------------- result objects
def _settings(backend: str, kv: str) -> EvalSettings:
    return EvalSettings(backend=backend, dtype="bfloat16", max_model_len=1024, kv_cache_dtype=kv,
                        enforce_eager=True, add_bos_token=True, apply_chat_template=False, num_fewshot=None,
                        limit=100, seed=0, batch_size="auto")


def cloze_task(acc: list[float], stderr: bool = True) -> TaskResult:
    n, mean = len(acc), sum(acc) / len(acc)
    se = math.sqrt(mean * (1 - mean) / (n - 1)) if stderr else None
    return TaskResult(task="austen_cloze", n_samples={"effective": n},
                      metrics={"acc": MetricValue(value=mean, stderr=se, stderr_source="lm-eval" if stderr else None,
                                                  higher_is_better=True, aggregation="mean")},
                      per_sample=PerSample(doc_ids=list(range(n)), values={"acc": acc}))


def ppl_task(docs: list[list[float]], per_sample: bool = True) -> TaskResult:
    agg = recovery.aggregation_for("word_perplexity")
    value = agg([tuple(d) for d in docs])
    se = stats.bootstrap_stderr([tuple(d) for d in docs], agg, iters=200) if per_sample else None
    return TaskResult(task="austen_ppl", n_samples={"effective": len(docs)},
                      metrics={"word_perplexity": MetricValue(value=value, stderr=se, higher_is_better=False,
                                                              stderr_source="bootstrap" if se else None)},
                      per_sample=PerSample(doc_ids=list(range(len(docs))), values={"word_perplexity": docs})
                      if per_sample else None)


def eval_result(model: str, cell: str, tasks: list[TaskResult], backend: str = "vllm",
                kv_cache_dtype: str = "auto") -> EvalResult:
    return EvalResult(identity=Identity(model=model, scheme=cell, checkpoint=f"/ckpt/{model}/{cell}"),
                      started_at="2025-01-01T00:00:00+00:00", backend=backend,
                      settings=_settings(backend, kv_cache_dtype), tasks={t.task: t for t in tasks},
                      config=EvalConfig(checkpoint=f"/ckpt/{model}/{cell}", limit=100, backend=backend))


_HW = HardwareInfo(cpu=CPUInfo(model="synthetic", arch="x86_64", cores=2, flags=["avx2"]), memory_total_bytes=8 << 30)
_PROV = Provenance(ptq_deploy_version="test", git_revision=None, python="3", platform="test", packages={},
                   hardware=_HW, created_at="2025-01-01T00:00:00+00:00")


def _three(v: float, unit: str) -> Summary:
    return Summary.of([v * 0.98, v, v * 1.02], unit)


def perf_result(model: str, cell: str, tok_s: float, weights_bytes: float) -> PerfResult:
    """Offline throughput (three iterations, ±2%) and the checkpoint's weight bytes; nothing else measured."""
    s = _three
    tp = ThroughputStats(num_requests=8, iterations=3, warmup=1, elapsed=s(1.0, "s"), requests_per_s=s(8.0, "req/s"),
                         output_tokens_per_s=s(tok_s, "tok/s"), total_tokens_per_s=s(tok_s * 5, "tok/s"),
                         tokens=TokenCheck(prompt_tokens_requested=512, prompt_tokens_counted=512,
                                           output_tokens_requested=128, output_tokens_counted=128))
    mem = MemoryStats(process="synthetic", rss_after_load_bytes=int(1e9), peak_rss_bytes=int(1.2e9), rss_samples=3,
                      weight_bytes_checkpoint=int(weights_bytes))
    work = WorkloadInfo(dataset="random", seed=0, num_prompts=8, input_len=64, output_len=16, prompt_lens=[64] * 8,
                        total_prompt_tokens=512, total_output_tokens_requested=128)
    return PerfResult(identity=Identity(model=model, scheme=cell, checkpoint=f"/ckpt/{model}/{cell}"),
                      vllm_quantization=None,
                      engine=None, config=PerfConfig(checkpoint=f"/ckpt/{model}/{cell}"), workload=work, load=None,
                      memory=mem, latency=None, throughput=tp, roofline=None, serving=None, wall_time_s=3.0,
                      started_at="2025-01-01T00:00:00+00:00", provenance=_PROV)
