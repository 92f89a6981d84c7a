"""The suite's plan: every (model, cell, step) with a content-hash key and its state before running.

A step is keyed by a hash of everything its result depends on (the scheme's content, not its file's
path; calibration; the cell's engine settings, KV-cache dtype included; perf / eval settings), so a
rerun skips finished steps and a changed setting reruns exactly the steps it affects. Whether a step
can run here is asked anew every time (``ptq_deploy.probe``), never read from an old record. Before
that, every model's group size is checked against its layers (``check_group_sizes``: from the model's
config, the shipped copy for a hub model the hub cannot serve). A quality-only scheme's perf step is
``not_applicable``: its weights are stored dense, so its speed is not that of any deployable format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ptq_deploy import probe
from ptq_deploy.compress import linear_input_sizes, schemes
from ptq_deploy.engine import EngineConfig
from ptq_deploy.errors import UsageError
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.kvcache import methods as kv_methods
from ptq_deploy.kvcache.config import offered_dtypes as kv_offered
from ptq_deploy.models import resolve
from ptq_deploy.suite import layout
from ptq_deploy.suite.experiment import Experiment, ModelSpec

State = Literal["done", "pending", "not_runnable", "not_applicable", "blocked", "running", "ok", "failed"]
# eval backend of a weight-only cell scored in vLLM on a dense copy of its dequantized weights
DEQUANTIZED = "vllm-dequantized"
QUALITY_ONLY = "not applicable: quality only (stored dense)"


def kv_dtype(kv: str) -> str:
    """The vLLM KV-cache dtype of a cell's KV-cache option (``auto`` for ``none``)."""
    return kv_methods.get(kv).vllm_dtype or "auto"


def compress_kv(kv: str) -> str:
    """The KV-cache scheme written into the checkpoint: calibrated fp8 scales, or none (vLLM's scales 1.0)."""
    return "fp8" if kv_methods.get(kv).calibrated else "none"


class RayOptions(BaseModel):
    """Where ``--executor ray`` runs (``suite.distributed``)."""

    address: str | None = Field(None, description="a running cluster: auto | HOST:PORT (default: start a "
                                                   "local one on this machine)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (default: the machine's)")
    cpus_per_cell: int = Field(1, ge=1, description="CPUs a cell's task asks for on a host without GPUs")


class RunOptions(BaseModel):
    results_dir: Path
    include_models: list[str] = []
    exclude_models: list[str] = []
    include_schemes: list[str] = []
    exclude_schemes: list[str] = []
    force: list[str] = []  # step names, or "all"
    dry_run: bool = False
    compress_python: str | None = None
    executor: Literal["local", "ray"] = Field("local", description="local: one step after another in this "
                                              "process; ray: the cells as tasks on a Ray cluster")
    ray: RayOptions = Field(default_factory=RayOptions)
    lanes: int = Field(1, ge=1, description="local executor: cells whose untimed steps (compress, inspect, eval, "
                       "kv) run at once, each lane on its share of the CPUs; perf steps run afterwards, alone")


class PlannedStep(BaseModel):
    model: str
    cell: str
    scheme: str
    kv_cache: str
    step: str
    key: str
    state: State
    reason: str | None = None
    backend: str | None = None  # eval steps: vllm | vllm-dequantized | hf
    duration_s: float | None = None
    worker: str | None = None  # under Ray: the node and pid running it ("10.0.0.5 pid 4242")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return (not include or name in include) and name not in exclude


def cell_engine(m: ModelSpec, kv_cache: str) -> EngineConfig:
    """The engine a cell is measured with: the model's settings, with the cell's KV-cache dtype."""
    if kv_cache == "none":
        return m.engine
    return m.engine.model_copy(update={"kv_cache_dtype": kv_dtype(kv_cache)})


def _engine_key(cfg: EngineConfig) -> dict:
    """The engine settings a step key hashes; a field added later counts only when set (older results keep
    their keys)."""
    data = cfg.model_dump()
    if data["pipeline_parallel_size"] == 1:
        del data["pipeline_parallel_size"]
    return data


def _runnable(scheme: str, kv: str, rules: probe.Rules) -> tuple[bool, str | None]:
    """Whether vLLM runs the cell here (the probe's measurement, else the static rules), and why not."""
    sup = rules.scheme(schemes.get(scheme))
    if not sup.runnable:
        return False, f"{sup.reason} [{sup.source}]"
    if kv == "none":
        return True, None
    k = rules.kv(kv_dtype(kv))
    return (True, None) if k.runnable else (False, f"{k.reason} [{k.source}]")


def _compress_key(exp: Experiment, m: ModelSpec, scheme: str, kv: str) -> str:
    s = schemes.get(scheme)
    calib = exp.compress.for_scheme(scheme).model_dump(exclude={"modifier_args"})
    if args := {k: v for k, v in exp.compress.modifier_args.items() if k in s.modifier_names}:
        calib["modifier_args"] = args  # only what reaches this scheme's recipe
    return _hash({"source": m.source, "trust": m.trust_remote_code, "scheme": s.model_dump(exclude={"source"}),
                  "group": m.group_size if s.group_adjustable else None, "kv": compress_kv(kv),
                  "calib": calib} | ({"kv_option": kv} if kv not in ("none", "fp8") else {}))


def _cell_steps(exp: Experiment, m: ModelSpec, scheme: str, kv: str, rules: probe.Rules) -> list[PlannedStep]:
    cell, s = layout.cell_name(scheme, kv), schemes.get(scheme)
    ckey = _compress_key(exp, m, scheme, kv)
    engine = _engine_key(cell_engine(m, kv))
    keys = {"compress": ckey, "inspect": _hash({"c": ckey, "step": "inspect"}),
            "perf": _hash({"c": ckey, "perf": exp.perf.model_dump(), "engine": engine}),
            "eval": _hash({"c": ckey, "engine": engine,  # the default backend leaves earlier keys as they were
                           "eval": exp.eval.model_dump(mode="json", exclude={"backend"} if exp.eval.backend == "vllm"
                                                       else None)})}
    runnable, reason = _runnable(scheme, kv, rules)
    slow = _too_slow(exp, s, rules) if runnable else None
    out = []
    for step in (st for st in exp.steps if st != "kv"):
        ps = PlannedStep(model=m.name, cell=cell, scheme=scheme, kv_cache=kv, step=step, key=keys[step],
                         state="pending")
        if step == "perf" and s.quality_only:
            ps.state, ps.reason = "not_applicable", QUALITY_ONLY
        elif step == "perf" and not runnable:
            ps.state, ps.reason = "not_runnable", f"not runnable here: {reason}"
        elif slow and (step == "perf" or step == "eval" and exp.eval.backend == "vllm"):
            ps.state, ps.reason = "not_runnable", slow
        if step == "eval" and ps.state == "pending":
            ps.backend = "hf" if exp.eval.backend == "hf" else "vllm" if runnable else _fallback(exp, s, kv)
            if ps.backend is None:
                ps.state, ps.reason = "not_runnable", f"not runnable here: {reason}"
            elif ps.backend != "vllm" and exp.eval.backend == "vllm":
                ps.key = _hash({"k": ps.key, "backend": ps.backend})
        out.append(ps)
    return out


def _too_slow(exp: Experiment, scheme: schemes.Scheme, rules: probe.Rules) -> str | None:
    """Why a cell vLLM runs here only at an emulated kernel's cost gets no perf or eval step, or None."""
    x = rules.scheme(scheme).slowdown
    if exp.max_slowdown is None or x is None or x <= exp.max_slowdown:
        return None
    return (f"not run here: {scheme.name} took {x:.0f}x the dense model's time per token in the probe (an emulated "
            f"kernel), above max_slowdown {exp.max_slowdown:g}; max_slowdown: null runs it")


def _fallback(exp: Experiment, scheme: schemes.Scheme, kv: str) -> str | None:
    """The eval backend of a cell vLLM cannot run here (``PlannedStep.backend``), or None."""
    if kv != "none" or exp.eval.fallback is None:
        return None
    if exp.eval.fallback == "dequantized":  # activation-quantized schemes: judged apart (activations not emulated)
        return DEQUANTIZED if scheme.kind != "dense" else None
    return "hf"


def _kv_step(exp: Experiment, m: ModelSpec, scheme: str) -> PlannedStep:
    """The long-context KV track of one scheme's checkpoint, one step: the quality-only methods (one prefill per
    sample for all) and the uncalibrated vLLM KV dtypes (an engine each)."""
    engine_rows = any(not kv_methods.get(k, kv_offered()).quality_only for k in exp.kv_step_methods)
    skip = {"schemes", "engine"} | (set() if engine_rows else {"served"})  # a key as before where no engine row
    key = _hash({"c": _compress_key(exp, m, scheme, "none"), "kv": exp.kv.model_dump(mode="json", exclude=skip),
                 "methods": exp.kv_step_methods})
    return PlannedStep(model=m.name, cell=layout.cell_name(scheme, "none"), scheme=scheme, kv_cache="none", step="kv",
                       key=key, state="pending", backend="hf")


def _model_steps(exp: Experiment, m: ModelSpec, names: list[str], rules: probe.Rules) -> list[PlannedStep]:
    steps = []
    kv_schemes = exp.kv.schemes or [exp.baseline]
    for scheme in names:
        for kv in exp.kv_vllm:
            if scheme == exp.baseline and kv != "none":
                continue
            steps += _cell_steps(exp, m, scheme, kv, rules)
            if kv == "none" and "kv" in exp.steps and exp.kv_step_methods and scheme in kv_schemes:
                steps.append(_kv_step(exp, m, scheme))
    if exp.eval.backend == "vllm" and any(ps.step == "eval" and ps.backend == "hf" for ps in steps):
        # a fallback cell scored by HF: the baseline scored by HF too
        base = next(p for p in steps if p.cell == exp.baseline and p.step == "eval")
        steps.insert(steps.index(base) + 1, base.model_copy(update={
            "step": "eval-hf", "backend": "hf", "key": _hash({"k": base.key, "backend": "hf"})}))
    return steps


def check_group_sizes(models: list[ModelSpec], names: list[str]) -> None:
    """Stop before any step runs when a model's group size does not divide the input size of a layer a
    grouped scheme quantizes. A model whose config cannot be read here is left to its compress step."""
    for m in models:
        grouped = [schemes.get(n) for n in names if schemes.get(n).group_size]
        if not grouped:
            continue
        try:
            sizes = linear_input_sizes(resolve(m.source, check_hub=False), m.trust_remote_code)
        except UsageError:
            continue
        for s in grouped:
            try:
                own = m.group_size if s.group_adjustable else None
                schemes.check_group_size(sizes, s.resolve().ignore, own or s.group_size,
                                         option="group_size" if own else "group size")
            except UsageError as e:
                hint = "" if m.group_size or not s.group_adjustable else " (set the model's group_size)"
                raise UsageError(f"models: {m.name} ({m.source}), {s.name}: {e}{hint}") from None


def check_sources(exp: Experiment, steps: list[PlannedStep]) -> None:
    """Every model with work left is found before the matrix starts (a local dir, a GGUF, a reachable or
    cached hub id): one line for the first that is not, instead of a failure at each cell's compress."""
    pending = {ps.model for ps in steps if ps.state == "pending"}
    for m in exp.models:
        if m.name in pending:
            try:
                resolve(m.source)
            except UsageError as e:
                raise UsageError(f"models: {m.name}: {e}") from None


def plan(exp: Experiment, opts: RunOptions, hw: HardwareInfo | None = None) -> list[PlannedStep]:
    """Every step of the selected cells, baseline first, marked done where a matching ok record exists.

    What cannot run here (``probe.rules``: measured, else the static rules) is not_runnable; a step recorded
    not_runnable that runs now (a new vLLM, a new probe) is pending again."""
    hw = hw or detect()
    models = [m for m in exp.models if _selected(m.name, opts.include_models, opts.exclude_models)]
    names = [s for s in exp.schemes if _selected(s, opts.include_schemes, opts.exclude_schemes)]
    check_group_sizes(models, names)
    if exp.baseline not in names and "eval" in exp.steps:
        names = [exp.baseline, *names]  # recovery needs the baseline cell
    names.sort(key=lambda s: s != exp.baseline)
    rules = probe.rules(hw)
    steps = [ps for m in models for ps in _model_steps(exp, m, names, rules)]
    for ps in steps:
        if ps.state != "pending" or "all" in opts.force or ps.step in opts.force:
            continue
        rec_path = layout.step_file(opts.results_dir, ps.model, ps.cell, ps.step)
        if rec_path.is_file():
            rec = layout.StepRecord.read(rec_path)
            # "not_runnable" then, runnable now: run it; "not_applicable" (quality only) does not change
            if rec.key == ps.key and rec.status in ("ok", "not_applicable"):
                ps.state, ps.duration_s = "done", rec.duration_s
    return steps
