"""The 2026 float formats (FP8-BLOCK, NVFP4, MXFP4, MXFP8) and W4AFP8 on real checkpoints of the tiny model:
inspect proves each format from its tensors and fails a tampered copy; vLLM's rules for other GPUs; a score whose
activations ran 16-bit is judged apart, never ranked."""

import json
import math
import shutil

import pytest
import torch
from conftest import COMPRESS_RESULTS, austen_ppl_per_document, worst_relative_difference
from report_synth import answers, cloze_task, documents, eval_result, ppl_task, put
from safetensors.torch import load_file, save_file

from ptq_deploy.compress import schemes
from ptq_deploy.hardware import detect
from ptq_deploy.hardware.support import hardware_for, scheme_support
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint
from ptq_deploy.report import build_report

# the tiny Llama of conftest: (out, in) of each targeted Linear, 2 layers
LINEARS = {"self_attn.q_proj": (192, 192), "self_attn.k_proj": (64, 192), "self_attn.v_proj": (64, 192),
           "self_attn.o_proj": (192, 192), "mlp.gate_proj": (512, 192), "mlp.up_proj": (512, 192),
           "mlp.down_proj": (192, 512)}
TINY_BLOCK = 64  # FP8-BLOCK's 128 block does not divide the tiny model's 192 inputs; W4AFP8's group likewise

# scheme -> (kernel family, options, what the proof names, bits per weight of a [out, in] Linear by the format's
# definition: value bits + scale bits per value (+ one global / block scale))
FORMATS = {
    "NVFP4": ("nvfp4", {}, "nvfp4 (FP4 E2M1) packed two per U8 + F8_E4M3 scales (tensor_group 16)",
              lambda o, i: 4 + 8 / 16),
    "NVFP4A16": ("nvfp4a16", {}, "nvfp4 (FP4 E2M1) packed two per U8", lambda o, i: 4 + 8 / 16),
    "MXFP4": ("mxfp4", {}, "mxfp4 (FP4 E2M1) packed two per U8 + U8 scales (group 32)", lambda o, i: 4 + 8 / 32),
    "MXFP4A16": ("mxfp4a16", {}, "U8 scales (group 32)", lambda o, i: 4 + 8 / 32),
    "MXFP8": ("mxfp8", {}, "F8_E4M3 + U8 scales (group 32)", lambda o, i: 8 + 8 / 32),
    "FP8-BLOCK": ("fp8-block", {"group_size": TINY_BLOCK}, "F8_E4M3 + BF16 scales (block 64x64)",
                  lambda o, i: 8 + 16 * math.ceil(o / 64) * math.ceil(i / 64) / (o * i)),
    "W4AFP8": ("w4afp8", {"group_size": TINY_BLOCK}, "int4 packed in I32 + BF16 scales (group 64)",
               lambda o, i: 4 + 16 / 64 + 8 * 16 / (o * i)),  # + pack-quantized's weight_shape (two I64)
}


def _inspect(path):
    return inspect_checkpoint(InspectConfig(checkpoint=path))


@pytest.mark.integration
@pytest.mark.parametrize("scheme", list(FORMATS))
def test_each_format_is_proven_from_its_tensors(compressed, scheme):
    kind, opts, storage, bits = FORMATS[scheme]
    rep = _inspect(compressed(scheme, **opts))
    assert rep.ok, [f.message for f in rep.findings if f.severity == "error"]
    assert rep.quantization.kind == kind == schemes.get(scheme).kind
    targeted = [lin for lin in rep.linears if lin.name != "lm_head"]
    assert len(targeted) == 2 * len(LINEARS) and {lin.status for lin in targeted} == {"quantized"}
    assert all(storage in lin.storage for lin in targeted), targeted[0].storage
    for lin in targeted:  # the stored bytes per weight are the format's, scales included (NVFP4's global: 1 value)
        o, i = LINEARS[lin.name.split(".", 3)[3]]
        assert lin.bits_per_weight == pytest.approx(bits(o, i), abs=64 / (o * i))


def _tamper(src, dst, name, change):
    """A copy of ``src`` whose tensor ``name`` (layer 0's q_proj) is replaced by ``change(tensor)``, or removed
    when that returns None."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    key = f"model.layers.0.self_attn.q_proj.{name}"
    new = change(sd.pop(key))
    if new is not None:
        sd[key] = new.contiguous()
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _nan_scales(t):
    if t.dtype == torch.uint8:  # E8M0: 0xFF is NaN
        return torch.full_like(t, 0xFF)
    return torch.full(t.shape, float("nan")).to(t.dtype)


TAMPERS = {  # id -> (scheme, tensor, change, what the proof says)
    "nvfp4-scales-of-a-wider-group": ("NVFP4", "weight_scale", lambda t: t[:, ::2], "weight_scale shape"),
    "nvfp4-without-global-scale": ("NVFP4", "weight_global_scale", lambda t: None, "no weight_global_scale"),
    "nvfp4-activation-global-scale-nan": ("NVFP4", "input_global_scale", _nan_scales, "input_global_scale:"),
    "mxfp4-e8m0-nan-scales": ("MXFP4", "weight_scale", _nan_scales, "E8M0 scales are 0xFF"),
    "mxfp4-one-value-per-byte": ("MXFP4", "weight_packed", lambda t: t.repeat_interleave(2, dim=1),
                                 "weight_packed shape"),
    "mxfp8-nan-codes": ("MXFP8", "weight", lambda t: torch.where(torch.arange(t.shape[1]) % 7 == 0,
                                                                  torch.tensor(float("nan")), t.float()).to(t.dtype),
                        "NaN codes"),
    "mxfp8-bf16-scales": ("MXFP8", "weight_scale", lambda t: t.to(torch.bfloat16), "expected U8"),
    "fp8-block-per-channel-scales": ("FP8-BLOCK", "weight_scale", lambda t: t[:, :1].repeat(64, 1),
                                     "weight_scale shape"),
    "fp8-block-negative-scales": ("FP8-BLOCK", "weight_scale", lambda t: -t, "not finite and positive"),
    "w4afp8-half-packed": ("W4AFP8", "weight_packed", lambda t: t[:, : t.shape[1] // 2], "weight_packed shape"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_tampered_copy_fails_the_proof(compressed, tmp_path, case):
    scheme, name, change, says = TAMPERS[case]
    src = compressed(scheme, **FORMATS[scheme][1])
    assert _inspect(src).ok
    rep = _inspect(_tamper(src, tmp_path / case, name, change))
    broken = {lin.name: lin.problems for lin in rep.linears if lin.status == "broken"}
    assert not rep.ok and list(broken) == ["model.layers.0.self_attn.q_proj"], broken
    assert any(says in p for p in broken["model.layers.0.self_attn.q_proj"]), broken


@pytest.mark.parametrize("scheme", ["FP8-BLOCK", "NVFP4A16", "NVFP4", "MXFP4A16", "MXFP4", "MXFP8", "W4AFP8"])
def test_what_ifs_follow_vllms_kernel_rules(scheme):
    """Each format by vLLM's rules on a T4 (7.5), A100 (8.0), H100 (9.0) and B200 (10.0): the weight-only fallback
    of a W4A4 format before Blackwell is runnable but not the fast path, and says the activations stay 16-bit."""
    s = schemes.get(scheme)
    by = {d: scheme_support(s, hardware_for(d, detect())) for d in ("t4", "a100-80gb", "h100-sxm", "b200")}
    w4afp8, weight_only = scheme == "W4AFP8", s.activations == "bf16"
    assert by["h100-sxm"].runnable  # every format has a Hopper path
    assert by["b200"].runnable != w4afp8 and by["b200"].fast_path != w4afp8  # W4AFP8's kernel is Hopper's only
    for sup in by.values():
        assert sup.runnable or sup.reason and sup.kernel == "-"
        if sup.runnable and not sup.fast_path and not weight_only:
            assert "16-bit" in sup.reason or "emulation" in sup.kernel or "before Blackwell" in sup.reason
    if scheme in ("NVFP4", "MXFP4"):  # W4A4: true FP4 activations on Blackwell only
        assert not by["h100-sxm"].fast_path and by["b200"].fast_path and "Marlin" in by["h100-sxm"].kernel


@pytest.mark.integration
def test_schemes_lists_what_the_probe_measured_for_each_format(cli, probe):
    p = cli("schemes")
    assert p.returncode == 0, p.stderr
    from ptq_deploy import probe as probe_mod

    rules = probe_mod.rules(detect())
    assert rules.probe is not None and "probe:" in " ".join(p.stdout.split())
    for scheme, (kind, *_rest) in FORMATS.items():
        if scheme == "NVFP4A16" or kind not in rules.probe.cases:
            continue
        case = rules.probe.cases[kind]
        assert case.runnable is not None, case  # decided here by loading it in vLLM
        line = next(ln for ln in p.stdout.splitlines() if ln.startswith(f"│ {scheme} "))
        assert ("│ no " in line) == (not case.runnable), line
    what_if = cli("schemes", "--device", "b200")
    assert what_if.returncode == 0 and "NVIDIA B200" in " ".join(what_if.stdout.split())
    assert cli("schemes", "--device", "nope").returncode == 2


@pytest.mark.integration
def test_vllm_quantizes_a_dense_copys_activations_as_the_checkpoint_does(compressed, tiny_model, tmp_path):
    """NVFP4 (FP4 activations, a calibrated global scale per layer; vLLM fuses q/k/v and gate/up): vLLM has no
    kernel for it here, so its dense copy is scored with the activations quantized by the copy's spec
    (``engine.emulation``), and lands on what transformers scores on the real checkpoint; the same copy without its
    spec (activations 16-bit) does not, and each result says which it was.

    Not within the dequantized-copy test's tolerance (twice the backends' gap on the unquantized model, here
    ~7e-6): a quantizer turns that float noise into rounding flips of whole FP4 steps. Measured on the 2-core AMX
    CPU: 7.9e-5 for NVFP4 (1.8e-5 for MXFP8), against 3.2e-4 (1.8e-4) without the activations quantized."""
    from ptq_deploy.checkpoint.dequantize import ACTIVATIONS_FILE, dequantize

    src = compressed("NVFP4")
    dense = dequantize(src, tmp_path / "dense")
    plain = tmp_path / "plain"
    shutil.copytree(dense, plain)
    (plain / ACTIVATIONS_FILE).unlink()
    # documents within one window of the model's whole length on both backends (lm-eval cuts its rolling windows
    # one token apart on the two): the comparison is of what is computed
    def per_doc(ckpt, backend):
        return austen_ppl_per_document(ckpt, backend, max_model_len=1024)

    worst_rel = worst_relative_difference

    (hf, on_checkpoint), (emulated, in_vllm), (unemulated, without) = (
        per_doc(src, "hf"), per_doc(dense, "vllm"), per_doc(plain, "vllm"))
    assert (hf.activations, emulated.activations, unemulated.activations) == ("emulated", "emulated", "not emulated")
    assert emulated.settings.enforce_eager and emulated.dequantized_from == str(src.resolve())
    backend_gap = worst_rel(per_doc(tiny_model, "hf")[1], per_doc(tiny_model, "vllm")[1])
    emulated_off, unemulated_off = worst_rel(on_checkpoint, in_vllm), worst_rel(on_checkpoint, without)
    assert worst_rel(in_vllm, without) > 10 * backend_gap  # the spec quantized the activations: a visible change
    assert emulated_off < unemulated_off / 2, (emulated_off, unemulated_off, backend_gap)  # ... towards the checkpoint


@pytest.mark.integration
def test_each_emulated_layer_computes_what_the_checkpoints_layer_computes(compressed, tmp_path, monkeypatch):
    """The emulation is exact, layer by layer: given one input, every Linear vLLM builds from NVFP4's dense copy
    (q/k/v and gate/up fused, as vLLM loads them), its input quantized by the plugin (``engine.emulation``),
    returns what the real checkpoint's layers return in transformers (compressed-tensors' quantized forward, as
    the HF backend loads it) to the matmul's float rounding (on the 2-core AMX CPU, 2026-12-06: bit for bit on
    the fused q/k/v and gate/up, 1.1e-6 of the output's scale on down_proj, whose 512 inputs vLLM's CPU gemm sums
    in another order); with 16-bit activations it is tens of percent off. Whole-model scores of the
    two backends still differ (the test above): their inputs to each layer differ by float noise, which the
    4-bit quantizer turns into rounding flips."""
    from safetensors.torch import load_file
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from ptq_deploy.checkpoint.dequantize import ACTIVATIONS_FILE, dequantize
    from ptq_deploy.engine import emulation
    from ptq_deploy.eval.backend import _decompressed_float32

    src = compressed("NVFP4")
    dense = dequantize(src, tmp_path / "dense")
    hf = _decompressed_float32({"pretrained": str(src)})["pretrained"]
    weights = load_file(str(dense / "model.safetensors"))
    emulation.register()  # what vLLM's plugin loader does in every vLLM process
    monkeypatch.setenv(emulation.ENV, str(dense / ACTIVATIONS_FILE))
    x = torch.randn(64, hf.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    groups = {"self_attn.qkv_proj": ("self_attn", "q_proj", "k_proj", "v_proj"),
              "self_attn.o_proj": ("self_attn", "o_proj"),
              "mlp.gate_up_proj": ("mlp", "gate_proj", "up_proj"), "mlp.down_proj": ("mlp", "down_proj")}
    checked = 0
    for i, block in enumerate(hf.model.layers):
        for fused, (parent, *parts) in groups.items():
            theirs = [getattr(getattr(block, parent), part) for part in parts]
            w = torch.cat([weights[f"model.layers.{i}.{parent}.{part}.weight"].float() for part in parts])
            assert torch.equal(w, torch.cat([m.weight.data for m in theirs]))  # the copy's weights are theirs
            with set_current_vllm_config(VllmConfig()):
                method = UnquantizedLinearMethod()
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
            layer.prefix = f"model.layers.{i}.{fused}"
            method.process_weights_after_loading(layer)
            xin = x if w.shape[1] == x.shape[1] else 3 * torch.randn(64, w.shape[1], generator=torch.Generator())
            with torch.no_grad():
                emulated = method.apply(layer, xin)
                checkpoint = torch.cat([m(xin) for m in theirs], dim=-1)
                sixteen_bit = torch.nn.functional.linear(xin, w)
            off = (emulated - checkpoint).abs().max() / checkpoint.abs().max()
            assert off < 1e-5, (layer.prefix, off)
            assert (sixteen_bit - checkpoint).abs().max() > 0.05 * checkpoint.abs().max(), layer.prefix
            checked += 1
    assert checked == 4 * len(hf.model.layers)


@pytest.mark.integration
def test_a_row_whose_activations_ran_16_bit_is_never_ranked(tiny_model, compressed, tmp_path):
    """Report on real compress / inspect results with synthetic scores: MXFP4 scored on its dense copy (activations
    16-bit) looks best on every count yet sits with the quality-only rows, saying why; NVFP4 scored with its
    activations emulated (HF backend, the baseline too) is ranked."""
    root = tmp_path / "results"
    root.mkdir()
    (root / "experiment.yaml").write_text("name: formats-test\nbaseline: BF16\n")
    cells = {"BF16": ("vllm", None, 0), "MXFP4": ("vllm", "not emulated", 0), "NVFP4": ("hf", "emulated", 3)}
    for cell, (backend, activations, losses) in cells.items():
        ck = tiny_model if cell == "BF16" else compressed(cell)
        if cell != "BF16":
            put(root, "tiny", cell, "compress", COMPRESS_RESULTS[str(ck)])
        put(root, "tiny", cell, "inspect", inspect_checkpoint(InspectConfig(checkpoint=ck)))
        tasks = [cloze_task(answers(100, 54, 0, losses)), ppl_task(documents(40.0, 0.5 * losses, 0.2))]
        ev = eval_result("tiny", cell, tasks, backend=backend)
        ev.activations = activations
        put(root, "tiny", cell, "eval", ev)
        if cell == "BF16":
            put(root, "tiny", cell, "eval-hf", eval_result("tiny", cell, tasks, backend="hf"))
        put(root, "tiny", cell, "perf", status="not_runnable", reason="no CPU kernel") if cell != "BF16" else None
    lb = build_report(root).leaderboards[0]
    assert [r.cell for r in lb.rows] == ["BF16", "NVFP4"] and [r.cell for r in lb.quality_only] == ["MXFP4"]
    mx = lb.quality_only[0]
    assert mx.rank is None and mx.cell not in lb.recommendation.candidates
    assert any("ran them 16-bit" in n and "fallback: hf" in n for n in mx.notes), mx.notes


ROTATED = "INT4-W4A16-SPINQUANT"  # R1, R2 folded into the weights, then GPTQ


@pytest.mark.integration
def test_rotations_are_proven_where_claimed(compressed, tmp_path):
    """SpinQuant's R1 (residual stream: embeddings and o/down outputs, q/k/v/gate/up and lm_head inputs) and R2
    (v output, o input) name modules this model has; a copy whose config lost its rotations, or names a module the
    model lacks, is an error."""
    src = compressed(ROTATED, group_size=TINY_BLOCK)
    rep = _inspect(src)
    assert rep.ok and rep.quantization.kind == "wna16"
    rotations = {f.message.split()[1]: f.message for f in rep.findings if f.code == "rotation"}
    layers = 2
    assert f"{layers * 5 + 1} modules at weight_input, {1 + layers * 2} modules at weight_output" in rotations["R1"]
    assert f"{layers} modules at weight_input, {layers} modules at weight_output" in rotations["R2"]

    def tampered(name, change):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        change(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
        return {f.code for f in _inspect(dst).errors}

    assert tampered("lost", lambda qc: qc.pop("transform_config")) == {"rotation-missing"}
    renamed = lambda qc: qc["transform_config"]["config_groups"]["R2"]["apply"][0].update(targets=["re:.*w_proj$"])  # noqa: E731
    assert tampered("renamed", renamed) == {"transform-target-missing"}
