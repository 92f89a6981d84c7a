"""Findings about a checkpoint: the proof summary, KV-cache scales, its ptq_deploy.json, hardware fit.

Each check appends ``Finding``s through ``find(severity, code, message)``; an error finding makes
``inspect`` exit 1.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ptq_deploy import probe
from ptq_deploy.checkpoint import CheckpointMetadata, Quantization, SafetensorsFile, TensorEntry
from ptq_deploy.checkpoint.grid import FakeQuant
from ptq_deploy.compress import schemes
from ptq_deploy.errors import PtqError
from ptq_deploy.hardware import detect
from ptq_deploy.hardware.support import hardware_for, kv_cache_support, scheme_support
from ptq_deploy.inspection.architecture import Module
from ptq_deploy.inspection.report import HardwareFit, LinearLayer


def summarise_proof(q: Quantization, linears: list[LinearLayer], find, fake: FakeQuant | None = None) -> None:
    targeted = [lin for lin in linears if lin.status in ("quantized", "broken") and lin.storage]
    broken = [lin for lin in linears if lin.status == "broken"]
    missing = [lin for lin in linears if lin.status == "missing"]
    if missing:
        find("error", "missing-layers", f"{len(missing)} Linear layers have no tensors in the checkpoint "
             f"(e.g. {missing[0].name})")
    if fake is not None and q.method is None:
        find("info", "quality-only", f"quality only - weights are on a {fake.bits}-bit {fake.method.upper()} grid, "
             f"stored dense; not a deployable format ({fake.bits_per_weight:.3f} bits/weight as codes + scales)")
    elif q.method is None:
        return
    claim = f"ptq_deploy.json declares a {fake.describe()}" if q.method is None else f"config claims {q.name} ({q.format})"
    if q.method in ("compressed-tensors", "gptq", "awq", "fp8", None) and not targeted:
        find("error", "no-targeted-layers", f"{claim}, which matches no Linear layer of the checkpoint")
        return
    if broken:
        first = broken[0]
        kinds = Counter(p.split(" (")[0] for lin in broken for p in lin.problems)
        if len(broken) == len(targeted):
            find("error", "claimed-scheme-not-in-tensors",
                 f"{claim} but none of its {len(targeted)} targeted Linear layers "
                 f"carries it: {first.problems[0]} (e.g. {first.name})")
        else:
            find("error", "inconsistent-layers",
                 f"{len(broken)} of {len(targeted)} targeted Linear layers do not match "
                 f"{'the declared grid' if q.method is None else 'the config'}: "
                 f"{first.problems[0]} (e.g. {first.name})")
        if len(kinds) > 1:
            find("info", "problem-kinds", "problems: " + "; ".join(f"{k}: {n}" for k, n in kinds.most_common()))
    ok = [lin for lin in targeted if lin.status == "quantized"]
    if ok:
        storages = Counter(lin.storage for lin in ok)
        find("info", "proof", f"{len(ok)}/{len(targeted)} targeted Linear layers carry "
             + "; ".join(f"{s}" + (f" [{n}]" if len(storages) > 1 else "") for s, n in storages.most_common()))
    left = [lin for lin in linears if lin.status in ("16-bit", "tied")]
    if left:
        reasons = Counter(lin.reason for lin in left)
        groups = {r: ", ".join(lin.name for lin in left if lin.reason == r)[:120] for r in reasons}
        find("info", "16-bit-layers", f"{len(left)} Linear layers left 16-bit: "
             + "; ".join(f"{names} ({r})" for r, names in groups.items()))


def check_kv_cache(path: Path, q: Quantization, modules: dict[str, Module],
                   by_module: dict[str, dict[str, TensorEntry]], headers: list[SafetensorsFile], find) -> None:
    if q.kv_cache is None:
        return
    attn = sorted({m for m, t in by_module.items() if "k_scale" in t or "v_scale" in t})
    expected = sorted(n for n, m in modules.items() if any(c.endswith("Attention") for c in m.classes[:1]))
    if not expected:  # architecture unknown: attention modules are the parents of k_proj
        expected = sorted({n.rsplit(".", 1)[0] for n in modules if n.endswith(".k_proj")})
    lacking = [m for m in expected if not {"k_scale", "v_scale"} <= set(by_module.get(m, {}))]
    if lacking:
        find("error", "kv-cache-scales-missing",
             f"config declares a KV-cache scheme ({q.kv_cache.type}{q.kv_cache.num_bits}) "
             f"but {len(lacking)} of {len(expected)} attention layers have no k_scale/v_scale (e.g. {lacking[0]}): "
             "the KV-cache quantization never ran")
        return
    if any(h.problem for h in headers):
        return
    try:  # the scales are scalars: reading them is cheap, and all-1.0 means never calibrated
        from safetensors import safe_open  # imports torch for "pt"

        values = []
        for h in headers:
            with safe_open(str(Path(path) / h.name), "pt") as f:
                values += [float(f.get_tensor(t.name).float().flatten()[0]) for t in h.tensors
                           if t.name.endswith(("k_scale", "v_scale")) and t.numel == 1]
    except Exception:
        return
    if values and all(v == 1.0 for v in values):
        find("error", "kv-cache-uncalibrated", f"all {len(values)} KV-cache scales are exactly 1.0: "
             "the KV-cache scales were never calibrated")
    else:
        find("info", "kv-cache", f"{len(attn)} attention layers carry calibrated k_scale/v_scale")


FOLDED = {"weight_input", "weight_output"}  # compressed-tensors transform locations fused into the weights offline


ROTATIONS = ("SpinQuantModifier", "QuIPModifier")


def check_transforms(config: dict, modules: dict[str, Module], meta: CheckpointMetadata | None, find) -> None:
    """A compressed-tensors ``transform_config`` (SpinQuant, QuIP rotations): every transform must target modules
    this architecture has. Rotations folded into the weights (``weight_input`` / ``weight_output``) leave no
    tensor of their own: the proof is that each target exists and the weights are stored as the scheme says;
    online ones (``input`` / ``output``) run at inference."""
    from compressed_tensors.utils.match import match_name  # imports torch

    groups = ((config.get("quantization_config") or {}).get("transform_config") or {}).get("config_groups") or {}
    claimed = None
    if meta is not None and meta.scheme in schemes.names():
        claimed = next((m for m in ROTATIONS if m in schemes.get(meta.scheme).modifier_names), None)
    if claimed and not groups:
        find("error", "rotation-missing", f"ptq_deploy.json says {meta.scheme} ({claimed}) but config.json carries no "
             "transform_config: the rotations never ran")
    for name, group in groups.items():
        where: Counter = Counter()
        for apply in group.get("apply") or []:
            for target in apply.get("targets") or []:
                hit = [n for n in modules if match_name(n, target)]
                if not hit:
                    find("error", "transform-target-missing", f"rotation {name} ({group.get('type')}) targets "
                         f"{target!r} at {apply.get('location')}, which matches no module of this model")
                where[apply.get("location")] += len(hit)
        if not where:
            find("error", "transform-target-missing", f"rotation {name} applies to nothing")
            continue
        how = "folded into the weights" if set(where) <= FOLDED else "applied online at inference"
        block = f", block {group['head_dim']}" if group.get("head_dim") else ""
        find("info", "rotation", f"rotation {name} ({group.get('type')}{block}): {how}, "
             + ", ".join(f"{n} modules at {loc}" for loc, n in sorted(where.items())))


def check_metadata(meta: CheckpointMetadata | None, problem: str | None, q: Quantization, find) -> None:
    """Does the checkpoint's ``ptq_deploy.json`` agree with what its config carries?"""
    if problem:
        find("warning", "metadata", problem)
    if meta is None:
        return
    try:
        claimed = schemes.get(meta.scheme)
    except PtqError:
        claimed = None
    if meta.fake_quant is not None and q.method is not None:
        find("error", "provenance-mismatch", f"ptq_deploy.json declares a {meta.fake_quant.describe()} (stored dense) "
             f"but config.json carries {q.name}")
    elif claimed is not None and claimed.quality_only and meta.fake_quant is None:
        find("error", "provenance-mismatch", f"ptq_deploy.json names the quality-only scheme {meta.scheme} but declares "
             "no fake_quant grid")
    elif claimed is not None and claimed.quality_only:
        if (claimed.method, claimed.bits) != (meta.fake_quant.method, meta.fake_quant.bits):
            find("error", "provenance-mismatch", f"ptq_deploy.json names {meta.scheme} but declares a "
                 f"{meta.fake_quant.describe()}")
    elif claimed is not None:
        if (claimed.weights, claimed.activations) != (q.weight_kind, q.activation_kind):
            find("error", "provenance-mismatch",
                 f"ptq_deploy.json says {meta.scheme} ({claimed.weights} weights, {claimed.activations} activations) "
                 f"but config.json carries {q.name} ({q.weight_kind}/{q.activation_kind})")
        elif meta.group_size and q.group_size and meta.group_size != q.group_size:
            find("error", "provenance-mismatch", f"ptq_deploy.json says group size {meta.group_size}, "
                 f"config.json has {q.group_size}")
    if meta.kv_cache != "none" and q.kv_cache is None:
        find("error", "kv-cache-not-applied", f"ptq_deploy.json says kv_cache={meta.kv_cache} but config.json has "
             "no kv_cache_scheme: the KV-cache quantization never ran")


def hardware_fit(device: str | None, q: Quantization, weight_bytes: int, find) -> HardwareFit:
    """Which vLLM kernel runs the checkpoint on ``device`` (``None``/``local``: here, as the probe measured it;
    ``cpu`` or a named GPU: the static rules), and does it fit in the device's memory."""
    hw = hardware_for(device, detect())
    if device in (None, "local"):
        rules = probe.rules(hw)
        sup, kv = rules.scheme(q), rules.kv(q.kv_cache_dtype) if q.kv_cache is not None else None
    else:
        sup = scheme_support(q, hw)
        kv = kv_cache_support(q.kv_cache_dtype, hw) if q.kv_cache is not None else None
    mem = hw.gpus[0].memory_total_bytes if hw.gpus else hw.memory_total_bytes
    name = hw.summary() if device in (None, "local", "cpu") else f"{device} ({hw.summary()})"
    fit = HardwareFit(device=name, support=sup, kv_cache=kv, weight_memory_bytes=weight_bytes,
                      device_memory_bytes=mem, fits_in_memory=weight_bytes < mem)
    if not sup.runnable:
        find("warning", "not-runnable", f"{q.name} does not run on {name}: {sup.reason}")
    elif not sup.fast_path and sup.reason:
        find("info", "slow-path", f"{q.name} on {name}: {sup.reason}")
    if kv is not None and not kv.runnable:
        find("warning", "kv-cache-not-runnable", f"the FP8 KV-cache scales cannot be used on {name} "
             f"({kv.reason}); vLLM must run it with kv_cache_dtype=bfloat16")
    if not fit.fits_in_memory:
        find("warning", "memory", f"weights need {weight_bytes / 2**30:.1f} GiB, the device has {mem / 2**30:.1f} GiB")
    return fit
