"""inspect: what is really in a checkpoint, and will it run here.

``inspect_checkpoint(InspectConfig) -> InspectReport``. Reads the checkpoint through
``ptq_deploy.checkpoint`` (config, quantization, ptq_deploy.json, safetensors headers; never the
weights), then:

- ``architecture``: the module tree, built from the config on the meta device (or from tensor names);
- ``verify``: every Linear the config targets must carry its quantized weight, scales (and zero
  points) in the shapes the config implies, per format (compressed-tensors, GPTQ, AWQ, FP8); a
  fake-quantized (POT / APOT) checkpoint's weights are read: every group must sit on its declared grid;
- ``findings``: a scheme the tensors do not carry, uncalibrated KV-cache scales, a ptq_deploy.json
  that disagrees with the config, which kernel family runs it on the device and whether it fits;
- ``aggregate``: bytes by layer type and dtype, compression vs BF16, bits per weight;
- ``runtime`` (``--runtime``): load it in vLLM and report the linear kernel vLLM selected.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ptq_deploy import checkpoint
from ptq_deploy.checkpoint import TensorEntry
from ptq_deploy.compress import schemes
from ptq_deploy.errors import PtqError
from ptq_deploy.inspection import findings as checks
from ptq_deploy.inspection.aggregate import aggregate, bits_per_weight
from ptq_deploy.inspection.architecture import meta_modules, module_of, modules_from_tensors, shape_from_tensors
from ptq_deploy.inspection.render import render
from ptq_deploy.inspection.report import Finding, InspectConfig, InspectReport, Severity
from ptq_deploy.inspection.runtime import runtime
from ptq_deploy.inspection.verify import BadConfig, VerifyContext, ct_config, verify_linears
from ptq_deploy.timeutil import timestamp


def _description(ck: checkpoint.Checkpoint) -> str:
    try:
        return schemes.get(ck.scheme_name).description
    except PtqError:
        return ck.quantization.format or ("unquantized" if ck.quantization.method is None else "")


def _tensors(path: Path, find) -> tuple[list[checkpoint.SafetensorsFile], dict[str, TensorEntry]]:
    files, missing = checkpoint.weight_files(path)
    headers = [checkpoint.read_safetensors_header(f) for f in files]
    for h in headers:
        if h.problem:
            find("error", "corrupt-file", h.problem)
    for m in missing:
        find("error", "missing-shard", f"the safetensors index names {m}, which is not in the checkpoint")
    if not files:
        other = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf")]
        if other:
            find("warning", "no-safetensors", f"no safetensors files (found {', '.join(other[:3])}); tensors not inspected")
        else:
            find("error", "no-weights", "no weight files (*.safetensors) in the checkpoint")
    tensors: dict[str, TensorEntry] = {}
    for h in headers:
        for t in h.tensors:
            if t.name in tensors:
                find("error", "duplicate-tensor", f"tensor {t.name} is stored in both {tensors[t.name].file} and {t.file}")
            tensors[t.name] = t
    return headers, tensors


def _ct(ck: checkpoint.Checkpoint, find):
    """compressed-tensors' own parse of the config (the verifiers match its targets), or None."""
    if ck.quantization.method != "compressed-tensors":
        if ck.quantization.method not in (None, "fp8", "gptq", "awq"):
            find("warning", "unknown-method", f"quant_method {ck.quantization.method!r}: tensors are listed but not "
                 "verified against it")
        return None
    try:
        ct = ct_config(ck.config["quantization_config"])
    except BadConfig as e:
        find("error", "bad-quantization-config", str(e))
        return None
    status = str(getattr(ct.quantization_status, "value", ct.quantization_status or ""))
    if status and status != "compressed":
        find("warning", "not-compressed", f"quantization_status is {status}: weights are not stored compressed")
    return ct


def inspect_checkpoint(cfg: InspectConfig) -> InspectReport:
    started = timestamp()
    ck = checkpoint.read(cfg.checkpoint)
    path = Path(ck.path)
    found: list[Finding] = []

    def find(sev: Severity, code: str, msg: str) -> None:
        found.append(Finding(severity=sev, code=code, message=msg))

    headers, tensors = _tensors(path, find)
    meta = meta_modules(path, ck.config, cfg.trust_remote_code)
    if meta is None:
        modules, param_count = modules_from_tensors(tensors), None
        if tensors:
            find("info", "architecture-from-tensors",
                 f"transformers cannot build {ck.config.get('architectures') or ck.config.get('model_type')} from "
                 "config.json; Linear layers recognised from tensor names")
    else:
        modules, param_count = meta
    by_module: dict[str, dict[str, TensorEntry]] = defaultdict(dict)
    for name, t in tensors.items():
        mod = module_of(name, modules)
        by_module[mod][name[len(mod) + 1:] if name.startswith(mod + ".") else name] = t
    linear_mods = [m for m in modules.values() if "Linear" in m.classes]
    for m in linear_mods:  # logical shapes when the architecture is unknown
        if m.in_features is None:
            shape_from_tensors(m, by_module.get(m.name, {}), ck.config)

    q = ck.quantization
    fake = ck.metadata.fake_quant if ck.metadata is not None else None
    linears = verify_linears(linear_mods, by_module, VerifyContext(q, _ct(ck, find), fake, path), find)
    checks.summarise_proof(q, linears, find, fake)
    checks.check_kv_cache(path, q, modules, by_module, headers, find)
    checks.check_transforms(ck.config, modules, ck.metadata, find)
    checks.check_metadata(ck.metadata, ck.metadata_problem, q, find)
    by_type, by_dtype = aggregate(tensors, modules, linears)
    tensor_bytes = sum(t.nbytes for t in tensors.values())
    shape_source = "config" if param_count is not None else "tensors"
    param_count = param_count if param_count is not None else sum(a.params for a in by_type.values()) or None
    bf16 = 2 * param_count if param_count else None
    fit = checks.hardware_fit(cfg.device, q, tensor_bytes, find)
    report = InspectReport(
        identity=ck.identity(), started_at=started, architecture=(ck.config.get("architectures") or [None])[0],
        model_type=ck.config.get("model_type"), shape_source=shape_source, metadata=ck.metadata, quantization=q,
        description=_description(ck), files=headers,
        disk_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()), tensor_bytes=tensor_bytes,
        bf16_bytes=bf16, compression_ratio=(bf16 / tensor_bytes) if bf16 and tensor_bytes else None,
        linear_bits_per_weight=bits_per_weight([lin for lin in linears if lin.status == "quantized" and lin.bits_per_weight]),
        all_linear_bits_per_weight=bits_per_weight([lin for lin in linears if lin.bits_per_weight]),
        effective_bytes=fake.effective_bytes(tensor_bytes) if fake is not None else None,
        by_layer_type=by_type, by_dtype=by_dtype, linears=linears, hardware=fit, findings=found)
    if cfg.runtime:
        report.runtime = runtime(path, q, ck.max_position, find)
    report.findings = sorted(found, key=lambda f: ("error", "warning", "info").index(f.severity))
    return report


__all__ = ["InspectConfig", "InspectReport", "inspect_checkpoint", "render"]
