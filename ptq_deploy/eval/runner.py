"""run_eval: score a checkpoint with lm-eval (``simple_evaluate``), optionally against a baseline.

Order of work: everything cheap is checked before any engine is loaded (checkpoint paths, task
names, that each task's data loads, that the backend can run the scheme, that a baseline result file
was produced with the same backend and settings); then the baseline checkpoint (if one is given)
and the checkpoint are scored one after the other with identical settings; the result (and the
baseline's) is written atomically to ``eval_results/``.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from unittest import mock

from ptq_deploy import checkpoint, stats
from ptq_deploy.checkpoint.dequantize import ACTIVATIONS_FILE
from ptq_deploy.engine import heap, vllm_version_shim
from ptq_deploy.errors import PtqError, UsageError
from ptq_deploy.eval import backend, recovery
from ptq_deploy.eval.config import BUNDLED_TASKS, EvalConfig
from ptq_deploy.eval.result import EvalResult, EvalSettings, MetricValue, PerSample, TaskResult
from ptq_deploy.hardware import detect
from ptq_deploy.models import _HUB_ID, DEFAULT_ALIASES, resolve
from ptq_deploy.provenance import collect, git_revision
from ptq_deploy.results import Identity
from ptq_deploy.results.io import atomic_write_text
from ptq_deploy.settings import settings
from ptq_deploy.timeutil import timestamp
from ptq_deploy.ui import status

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- checks before loading anything
def activation_path(path: str, backend: str, dequantized_from: str | None) -> str | None:
    """``EvalResult.activations`` for a score of ``path`` on ``backend``: does the scored model quantize the
    activations its scheme quantizes? A dense copy's scheme is read from the checkpoint it was made from; vLLM
    quantizes a copy's activations where the copy carries its spec (``engine.emulation``, checked at load)."""
    try:
        q = checkpoint.read(path).quantization
        source = checkpoint.read(dequantized_from).quantization if dequantized_from else q
    except (UsageError, OSError):
        return None
    if source.input_activations is None:
        return "16-bit"
    if q.input_activations is None:  # the dense copy of an activation-quantized checkpoint: vLLM quantizes them
        emulated = backend == "vllm" and (Path(path) / ACTIVATIONS_FILE).is_file()  # ... by its spec (the plugin)
        return "emulated" if emulated else "not emulated"
    return "kernel" if backend == "vllm" else "emulated"


def resolve_checkpoint(spec: str) -> tuple[str, Identity, str | None]:
    """``(path or hub id, identity, the checkpoint a dense copy was dequantized from)``; one clear error for
    a path that does not exist."""
    p = Path(spec).expanduser()
    if spec not in DEFAULT_ALIASES and not p.exists():
        if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec) or p.suffix.lower() == ".gguf":
            raise UsageError(f"checkpoint not found: {spec}")
    src = resolve(spec)
    if src.kind == "hub":
        return src.path, Identity(model=spec.split("/")[-1], scheme="hub", checkpoint=spec), None
    facts = checkpoint.read(src.path)
    return src.path, facts.identity(), facts.metadata.dequantized_from if facts.metadata else None


@contextmanager
def _quiet(*names: str, level: int = logging.ERROR):
    """Silence library chatter (hub retries, lm-eval notices) while task data loads."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...], include_defaults: bool):
    with _quiet("lm_eval"):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def _lm_eval_task_names(tm=None) -> set[str] | None:
    """lm-eval's own task names (its index takes ~20 s to build): kept per lm-eval release under
    ``<home>/lm-eval-tasks``, so that a mistyped name is refused without building the index again. With ``tm``
    (built with lm-eval's defaults) the names are taken from it and kept; else the kept ones, or None."""
    kept = settings().home / "lm-eval-tasks" / f"lm-eval-{package_version('lm_eval')}.json"
    if tm is None:
        try:
            return set(json.loads(kept.read_text()))
        except (OSError, ValueError):
            return None
    names = set(tm.all_tasks)
    try:
        atomic_write_text(kept, json.dumps(sorted(names)), force=True)
    except OSError:
        pass
    return names


def task_manager(cfg: EvalConfig):
    """lm-eval's TaskManager over the bundled tasks, ``--include-path`` dirs and (when needed) its own."""
    for p in cfg.include_path:
        if not Path(p).is_dir():
            raise UsageError(f"--include-path {p} is not a directory")
    paths = tuple(str(p) for p in cfg.task_paths())
    tm = _task_manager(paths, include_defaults=False)  # ours + --include-path: indexed in well under a second
    absent = [t for t in cfg.tasks if t not in tm.all_tasks]
    if not absent:
        return tm
    yaml_file = {t for t in absent if t.endswith((".yaml", ".yml")) and Path(t).is_file()}
    known = _lm_eval_task_names()  # lm-eval's own names, kept from the last time its index was built
    if known is None or any(t in known or t in yaml_file for t in absent):
        tm = _task_manager(paths, include_defaults=True)  # lm-eval's own ~thousands of YAMLs: ~20 s here
        known = _lm_eval_task_names(tm)
    for t in absent:
        if t not in tm.all_tasks and t not in yaml_file:
            close = difflib.get_close_matches(t, sorted({*tm.all_tasks, *known}), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown task '{t}'{hint} (bundled offline tasks: {', '.join(BUNDLED_TASKS)}; "
                             f"add your own task directories with --include-path)")
    return tm


def load_tasks(tm, tasks: list[str]) -> list[Any]:
    """Build every task now (this fetches its data), so a task that cannot load fails before any engine."""
    built: list[Any] = []
    for t in tasks:
        try:
            with _quiet("lm_eval", "datasets", "huggingface_hub", "urllib3", "fsspec"):
                loaded = tm.load([t])
        except Exception as e:
            msg = (str(e).strip().splitlines() or [""])[0]
            raise UsageError(f"task {t}: cannot load its data ({type(e).__name__}: {msg}); is the dataset hub "
                             f"reachable? offline tasks: {', '.join(BUNDLED_TASKS)}") from None
        built.extend([loaded["groups"][t]] if t in loaded["groups"] else loaded["tasks"].values())
    return built


# ---------------------------------------------------------------- lm-eval output -> TaskResult
def _jsonable(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _per_sample(samples: list[dict[str, Any]], metrics: list[str]) -> PerSample | None:
    by_filter: dict[str, dict[int, dict[str, Any]]] = {}
    for s in samples:
        by_filter.setdefault(s.get("filter", "none"), {})[int(s["doc_id"])] = s
    if not by_filter:
        return None
    doc_ids = sorted(next(iter(by_filter.values())))
    values: dict[str, list[Any]] = {}
    for m in metrics:
        metric, _, filt = m.partition(",")
        rows = by_filter.get(filt or "none", {})
        if all(d in rows and metric in rows[d] for d in doc_ids):
            values[m] = [_jsonable(rows[d][metric]) for d in doc_ids]
    return PerSample(doc_ids=doc_ids, values=values)


def task_results(out: dict[str, Any], cfg: EvalConfig) -> dict[str, TaskResult]:
    tasks: dict[str, TaskResult] = {}
    for task, res in out["results"].items():
        hib = out.get("higher_is_better", {}).get(task, {})
        conf = _jsonable(out.get("configs", {}).get(task, {}))
        aggs = {m["metric"]: m["aggregation"] for m in conf.get("metric_list", [])
                if isinstance(m, dict) and isinstance(m.get("aggregation"), str)}
        metrics: dict[str, MetricValue] = {}
        for key, val in res.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr") or _float(val) is None:
                continue
            name = metric if filt == "none" else f"{metric},{filt}"
            se = _float(res.get(f"{metric}_stderr,{filt}"))
            metrics[name] = MetricValue(value=float(val), stderr=se, stderr_source="lm-eval" if se is not None else None,
                                        higher_is_better=hib.get(metric), aggregation=aggs.get(metric))
        if not metrics:
            continue  # a group row without its own aggregate
        samples = out.get("samples", {}).get(task)
        per = _per_sample(samples, list(metrics)) if samples else None
        if per and cfg.bootstrap_iters:
            for name, mv in metrics.items():
                agg = recovery.aggregation_for(name.partition(",")[0], mv.aggregation)
                if mv.stderr is None and agg and len(per.values.get(name, [])) >= 2:
                    mv.stderr = stats.bootstrap_stderr(per.values[name], agg, cfg.bootstrap_iters, cfg.engine.seed)
                    mv.stderr_source = "bootstrap"
        tasks[task] = TaskResult(
            task=task, metrics=metrics, n_shot=out.get("n-shot", {}).get(task), n_samples=out.get("n-samples", {}).get(task, {}),
            version=_jsonable(out.get("versions", {}).get(task)), config=conf, per_sample=per,
            samples=_jsonable(samples) if (samples and cfg.log_samples) else None)
    return tasks


# ---------------------------------------------------------------- one checkpoint
def _evaluate(cfg: EvalConfig, model_path: str, identity: Identity, settings: EvalSettings,
              args: dict[str, Any], tasks: list[Any], tm, llm=None, against: EvalSettings | None = None) -> EvalResult:
    """Load, check the loaded settings against the baseline's (``against``), score."""
    import lm_eval.evaluator  # heavy
    from lm_eval import simple_evaluate

    started, t0 = timestamp(), time.perf_counter()
    shim = vllm_version_shim(lm_eval=True) if settings.backend == "vllm" else nullcontext()
    with shim, _env(DISABLE_MULTIPROC="1"), backend.open_lm(settings.backend, args, llm) as (lm, summary):
        if settings.backend == "vllm":  # dtype "auto": what the engine resolved it to, as an engine passed in says
            loaded = {"dtype": summary.dtype} if summary.dtype and summary.dtype != "auto" else {}
            settings = settings.model_copy(update=loaded | {"host_heap": heap.current()})
        if against is not None:
            recovery.refuse_different(against, settings)
        # lm-eval records `git describe` of the working directory, letting git print "fatal: not a git
        # repository" outside a checkout; it records this project's revision instead (provenance's, quiet)
        with status(f"lm-eval ({settings.backend}) on {identity.label}: {', '.join(cfg.tasks)}"), \
                mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", git_revision):
            try:
                out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                                      log_samples=True, apply_chat_template=cfg.apply_chat_template,
                                      task_manager=tm, bootstrap_iters=cfg.bootstrap_iters)
            except (KeyboardInterrupt, PtqError):
                raise
            except Exception as e:
                msg = (str(e).strip().splitlines() or [""])[0]
                raise PtqError(f"lm-eval failed on {model_path}: {type(e).__name__}: {msg}") from None
    if not out:
        raise PtqError("lm-eval returned no results")
    meta = {k: _jsonable(out[k]) for k in ("config", "n-shot", "versions", "group_subtasks", "date",
                                           "lm_eval_version", "transformers_version", "git_hash",
                                           "total_evaluation_time_seconds") if k in out}
    if settings.kv_cache_dtype != "auto":
        identity = identity.model_copy(update={"kv_cache": settings.kv_cache_dtype})
    return EvalResult(identity=identity, started_at=started, wall_time_s=time.perf_counter() - t0,
                      provenance=collect(), backend=settings.backend, settings=settings,
                      tasks=task_results(out, cfg), engine=summary, lm_eval=meta, config=cfg)


def run_eval(cfg: EvalConfig, llm=None) -> EvalResult:
    """Score ``cfg.checkpoint`` (or the already loaded vLLM engine ``llm``) on ``cfg.tasks``.

    With ``cfg.baseline`` (a checkpoint, or a previous result JSON) the result carries per-task
    recovery; both sides are scored with the same backend and settings, or the comparison is refused.
    """
    hw = detect()
    path, identity, dequantized_from = resolve_checkpoint(cfg.checkpoint)
    base_file: EvalResult | None = None
    base_ckpt: tuple[str, Identity, str | None] | None = None
    if cfg.baseline:
        bp = Path(cfg.baseline).expanduser()
        if bp.suffix == ".json" or bp.is_file():
            if not bp.is_file():
                raise UsageError(f"baseline result not found: {cfg.baseline}")
            base_file = EvalResult.read(bp)
        else:
            base_ckpt = resolve_checkpoint(cfg.baseline)
    settings, args = backend.plan(cfg, path, hw, llm)
    base_plan = backend.plan(cfg, base_ckpt[0], hw) if base_ckpt else None
    if base_plan:
        recovery.refuse_different(base_plan[0], settings)
    if base_file is not None:
        recovery.check_settings(base_file, settings)
    tm = task_manager(cfg)
    tasks = load_tasks(tm, cfg.tasks)

    baseline: EvalResult | None = base_file
    if base_ckpt and base_plan:
        baseline = _evaluate(cfg.model_copy(update={"checkpoint": cfg.baseline, "baseline": None}), base_ckpt[0],
                             base_ckpt[1], base_plan[0], base_plan[1], load_tasks(tm, cfg.tasks), tm)
        if cfg.write:
            baseline.write_new(cfg.output_dir)
    result = _evaluate(cfg, path, identity, settings, args, tasks, tm, llm,
                       against=baseline.settings if baseline is not None else None)
    result.dequantized_from = dequantized_from
    result.activations = activation_path(path, settings.backend, dequantized_from) if Path(path).exists() else None
    if baseline is not None:
        result.baseline = baseline.path or baseline.identity.checkpoint
        result.recovery = recovery.compare(baseline, result, iters=cfg.bootstrap_iters, seed=cfg.engine.seed)
    if cfg.write:
        result.write_new(cfg.output_dir)
    return result
