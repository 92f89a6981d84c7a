"""inspect: formats, dtypes, sizes, proof of quantization and hardware fit, on real checkpoints of the
tiny model (every scheme family) and the embedded model, plus hand-made broken and hub-format ones."""

import io
import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rich.console import Console

from ptq_deploy.inspection import InspectConfig, inspect_checkpoint, render

# the tiny Llama of conftest: hidden 192, 3 heads x 64 (1 KV head), intermediate 512, 2 layers, vocab 512
LINEARS = {"self_attn.q_proj": (192, 192), "self_attn.k_proj": (64, 192), "self_attn.v_proj": (64, 192),
           "self_attn.o_proj": (192, 192), "mlp.gate_proj": (512, 192), "mlp.up_proj": (512, 192),
           "mlp.down_proj": (192, 512)}  # (out, in)
LAYERS, VOCAB, HIDDEN = 2, 512, 192
LINEAR_PARAMS = LAYERS * sum(o * i for o, i in LINEARS.values())
PARAMS = LINEAR_PARAMS + 2 * VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN  # + embed, lm_head, norms


def expected_bytes(bits: int, group: int | None, shape_tensor: bool) -> int:
    """Tensor bytes of a tiny-model checkpoint whose Linears (lm_head excepted) hold ``bits``-bit
    weights with one BF16 scale per output row (per group with ``group``)."""
    q = 0
    for out, inp in LINEARS.values():
        q += out * inp * bits // 8 + 2 * out * (math.ceil(inp / group) if group else 1) + (16 if shape_tensor else 0)
    return LAYERS * q + 2 * (PARAMS - LINEAR_PARAMS)


def inspect(path, **kw):
    return inspect_checkpoint(InspectConfig(checkpoint=path, **kw))


def codes(rep, severity="error"):
    return {f.code for f in rep.findings if f.severity == severity}


def tensor(rep, name):
    return next(t for t in rep.tensors if t.name == name)


def test_int4_w4a16_group64_is_proven_and_sized(compressed, runs_here):
    rep = inspect(compressed("INT4-W4A16-RTN", group_size=64))
    q = rep.quantization
    assert (q.method, q.format, q.name) == ("compressed-tensors", "pack-quantized", "INT4-W4A16")
    assert rep.identity.scheme == "INT4-W4A16-RTN"  # the registry scheme that made it (ptq_deploy.json)
    assert q.weights.group_size == 64 and q.ignore == ["lm_head"] and rep.ok, rep.findings
    w = tensor(rep, "model.layers.0.mlp.down_proj.weight_packed")
    assert (w.dtype, w.shape) == ("I32", [192, 512 // 8])
    assert tensor(rep, "model.layers.0.mlp.down_proj.weight_scale").shape == [192, 512 // 64]
    quantized = [lin for lin in rep.linears if lin.status == "quantized"]
    assert len(quantized) == LAYERS * len(LINEARS)
    assert [(lin.name, lin.reason) for lin in rep.linears if lin.status == "16-bit"] == [("lm_head", "ignore: lm_head")]
    assert 4.25 <= rep.linear_bits_per_weight < 4.27  # 4 bits + a BF16 scale per 64 weights (+ shape tensor)
    assert rep.bf16_bytes == 2 * PARAMS and rep.shape_source == "config"
    assert rep.tensor_bytes == expected_bytes(4, 64, shape_tensor=True)
    assert rep.compression_ratio == pytest.approx(2 * PARAMS / expected_bytes(4, 64, True), rel=1e-9)
    assert 2.3 < rep.compression_ratio < 2.5
    assert rep.by_dtype["I32"].tensors == LAYERS * len(LINEARS)
    assert rep.by_layer_type["model.layers.*.mlp.down_proj"].params == LAYERS * 192 * 512
    # hardware: Marlin/Machete on Hopper (static rules for a what-if); here, what the probe measured
    assert "Machete" in inspect(rep.identity.checkpoint, device="h100").hardware.support.kernel
    here = rep.hardware.support
    assert here.runnable == runs_here("INT4-W4A16-RTN").runnable and here.source.startswith("probe: ")
    assert ("not-runnable" in codes(rep, "warning")) == (not here.runnable)


@pytest.mark.parametrize("scheme, dtype, family", [("FP8-W8A8", "F8_E4M3", "fp8-w8a8"), ("INT8-W8A8", "I8", "int8-w8a8")])
def test_w8a8_checkpoints(compressed, scheme, dtype, family, probe):
    rep = inspect(compressed(scheme))
    assert rep.ok, rep.findings
    assert rep.quantization.name == scheme == rep.identity.scheme
    assert rep.quantization.input_activations.dynamic is True
    w = tensor(rep, "model.layers.1.self_attn.q_proj.weight")
    assert (w.dtype, w.shape) == (dtype, [192, 192])
    assert tensor(rep, "model.layers.1.self_attn.q_proj.weight_scale").shape == [192, 1]
    assert rep.tensor_bytes == expected_bytes(8, None, shape_tensor=False)
    assert 8.0 < rep.linear_bits_per_weight < 8.1  # 8 bits + one BF16 scale per row
    assert rep.compression_ratio == pytest.approx(2 * PARAMS / expected_bytes(8, None, False))
    measured = probe.cases[family]  # the kernel vLLM picked here for this family
    assert rep.hardware.support.runnable == measured.runnable and rep.hardware.support.kernel == measured.kernel


def test_int8_weight_only_and_what_if_devices(compressed, runs_here):
    path = compressed("INT8-W8A16-RTN")
    rep = inspect(path, device="cpu")
    assert rep.ok and rep.quantization.name == "INT8-W8A16" and rep.quantization.format == "pack-quantized"
    assert tensor(rep, "model.layers.0.mlp.up_proj.weight_packed").shape == [512, 192 // 4]
    assert rep.tensor_bytes == expected_bytes(8, None, shape_tensor=True)
    assert not rep.hardware.support.runnable and "uint4" in rep.hardware.support.reason
    assert inspect(path, device="a100").hardware.support.kernel == "Marlin"
    if not runs_here("INT8-W8A16-RTN").runnable:
        rt = inspect(path, runtime=True).runtime  # not runnable here: said, not loaded
        assert not rt.loaded and "cannot run in vLLM here" in rt.not_runnable


def test_runtime_reports_the_kernel_vllm_selected(compressed, probe):
    if not probe.cases["int8-w8a8"].runnable:
        pytest.skip(f"INT8-W8A8 does not run here: {probe.cases['int8-w8a8'].error}")
    rep = inspect(compressed("INT8-W8A8"), runtime=True)
    rt = rep.runtime
    assert rt.loaded and rt.quantization == "compressed-tensors" and rt.load_time_s > 0
    kernels = " ".join(rt.linear_kernels)
    assert "CompressedTensorsW8A8Int8" in kernels and probe.cases["int8-w8a8"].kernel in kernels
    assert sum(rt.linear_kernels.values()) == LAYERS * 4  # qkv, o, gate_up, down (fused by vLLM)


def test_claimed_w4a16_with_bf16_weights_is_an_error(cli, tiny_model, compressed, tmp_path):
    fake = tmp_path / "fake-w4a16"
    shutil.copytree(tiny_model, fake)
    cfg = json.loads((fake / "config.json").read_text())
    real = json.loads((compressed("INT4-W4A16-RTN", group_size=64) / "config.json").read_text())
    cfg["quantization_config"] = real["quantization_config"]
    (fake / "config.json").write_text(json.dumps(cfg))
    p = cli("inspect", str(fake), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["kind"] == "inspect" and rep["schema_version"] == 2
    err = [f for f in rep["findings"] if f["code"] == "claimed-scheme-not-in-tensors"]
    assert err and err[0]["severity"] == "error"
    assert "claims INT4-W4A16" in err[0]["message"] and "BF16" in err[0]["message"]
    assert {lin["status"] for lin in rep["linears"] if lin["name"] != "lm_head"} == {"broken"}
    assert rep["compression_ratio"] == 1.0 and rep["linear_bits_per_weight"] is None


def test_truncated_safetensors_is_an_error(compressed, tmp_path):
    bad = tmp_path / "truncated"
    shutil.copytree(compressed("FP8-W8A8"), bad)
    f = bad / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    rep = inspect(bad)
    assert not rep.ok and {"corrupt-file", "inconsistent-layers"} <= codes(rep)
    assert rep.files[0].truncated and 0 < sum(t.truncated for t in rep.tensors) < len(rep.tensors)
    buf = io.StringIO()  # the console report the CLI prints (its exit code: see the test above)
    render(rep, Console(file=buf, width=140))
    text = buf.getvalue()
    assert "model.safetensors is truncated" in text and "tensors cut off" in text and "error finding" in text


def test_missing_checkpoint_is_one_clear_line(cli, tmp_path):
    p = cli("inspect", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'nope'}"


def test_kv_cache_claim_without_scales_is_an_error(compressed, tmp_path):
    """The seeds' bug: a KV-cache scheme that never ran. Claimed in config.json or ptq_deploy.json."""
    fake = tmp_path / "kv"
    shutil.copytree(compressed("FP8-W8A8"), fake)
    cfg = json.loads((fake / "config.json").read_text())
    cfg["quantization_config"]["kv_cache_scheme"] = {"num_bits": 8, "type": "float", "strategy": "tensor",
                                                     "dynamic": False, "symmetric": True}
    (fake / "config.json").write_text(json.dumps(cfg))
    assert "kv-cache-scales-missing" in codes(inspect(fake))
    cfg["quantization_config"]["kv_cache_scheme"] = None
    (fake / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((fake / "ptq_deploy.json").read_text())
    (fake / "ptq_deploy.json").write_text(json.dumps({**meta, "kv_cache": "fp8"}))
    assert codes(inspect(fake)) == {"kv-cache-not-applied"}
    (fake / "ptq_deploy.json").write_text(json.dumps({**meta, "scheme": "INT4-W4A16-RTN"}))
    assert codes(inspect(fake)) == {"provenance-mismatch"}


def _hub_checkpoint(tiny_model, out, method: str, bits=4, group=64):
    """A GPTQ / AWQ hub-format checkpoint of the tiny architecture (qweight, qzeros, scales)."""
    shutil.copytree(tiny_model, out)
    sd = load_file(out / "model.safetensors")
    pack = 32 // bits
    for name in list(sd):
        mod = name.rsplit(".", 1)[0]
        if not name.endswith(".weight") or not any(mod.endswith(k) for k in LINEARS):
            continue
        o, i = sd.pop(name).shape
        g = i // group
        if method == "gptq":
            sd[mod + ".qweight"] = torch.zeros(i // pack, o, dtype=torch.int32)
            sd[mod + ".g_idx"] = torch.arange(i, dtype=torch.int32) // group
        else:
            sd[mod + ".qweight"] = torch.zeros(i, o // pack, dtype=torch.int32)
        sd[mod + ".qzeros"] = torch.zeros(g, o // pack, dtype=torch.int32)
        sd[mod + ".scales"] = torch.ones(g, o, dtype=torch.float16)
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, "bits": bits, "group_size": group, "sym": True,
                                  "desc_act": False, **({"version": "gemm", "zero_point": True} if method == "awq" else {})}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_hub_formats_are_recognised(tiny_model, tmp_path, method):
    rep = inspect(_hub_checkpoint(tiny_model, tmp_path / method, method), device="h100")
    assert rep.ok, rep.findings
    assert rep.quantization.method == method and rep.quantization.name == f"{method.upper()}-W4A16"
    lins = {lin.name: lin for lin in rep.linears}
    assert lins["lm_head"].status == "16-bit"
    q = [lin for lin in rep.linears if lin.status == "quantized"]
    assert len(q) == LAYERS * len(LINEARS) and "qweight" in q[0].storage
    assert 4.3 < rep.linear_bits_per_weight < 4.6  # 4 + 16/64 scales + 4/64 zeros (+ g_idx)
    assert rep.hardware.support.runnable and "Marlin" in rep.hardware.support.kernel
    # a hub checkpoint that lost its scales
    broken = tmp_path / f"{method}-broken"
    shutil.copytree(rep.identity.checkpoint, broken)
    sd = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in sd.items() if not k.endswith(".scales")}, broken / "model.safetensors")
    assert "claimed-scheme-not-in-tensors" in codes(inspect(broken))


def test_embedded_model_is_dense_with_tied_head():
    from ptq_deploy.models import resolve

    rep = inspect(resolve("default").path)
    assert rep.ok and rep.quantization.method is None and rep.quantization.name == "BF16"
    assert rep.identity.model == "smollm2-135m"  # the same label perf and eval give it
    assert rep.bf16_bytes == 2 * 134_515_008 == rep.tensor_bytes and rep.compression_ratio == 1.0
    lins = {lin.name: lin for lin in rep.linears}
    assert lins["lm_head"].status == "tied" and lins["lm_head"].reason == "tied to model.embed_tokens"
    assert sum(lin.status == "16-bit" for lin in rep.linears) == 30 * 7
    assert rep.all_linear_bits_per_weight == 16.0 and set(rep.by_dtype) == {"BF16"}
