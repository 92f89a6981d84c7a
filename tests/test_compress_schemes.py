"""Issue acceptance on the real embedded model (SmolLM2-135M): every scheme compresses on this CPU
and its checkpoint carries what the scheme promises; vLLM-runnable ones generate close to BF16. AWQ is
checked on the tiny model (test_compress): its grid search costs minutes here whatever the calibration size;
GPTQ at 8 bits writes INT8-W8A16-RTN's format and runs INT4-W4A16's algorithm, both checked here."""

import json

import pytest
from safetensors import safe_open

from ptq_deploy import engine
from ptq_deploy.compress import schemes
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint

pytestmark = pytest.mark.integration

# scheme -> (compressed-tensors format, weight tensor suffix, dtype on disk, bits per weight element)
# one scheme per format on the embedded model; GPTQ's path is INT8-W8A8's (SmoothQuant, then GPTQ), so INT4-W4A16
# (GPTQ, ~70 s here) would check INT4-W4A16-RTN's format again (its group-wise GPTQ runs in test_commands)
EXPECT = {
    "FP8-W8A8": ("float-quantized", "weight", "F8_E4M3", 8),
    "INT8-W8A8": ("int-quantized", "weight", "I8", 8),
    "INT8-W8A16-RTN": ("pack-quantized", "weight_packed", "I32", 8),
    "INT4-W4A16-RTN": ("pack-quantized", "weight_packed", "I32", 4),
}
BYTES = {"BF16": 2, "F8_E4M3": 1, "I8": 1, "I32": 4, "I64": 8, "F32": 4}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}


def _linear_ratio(tensors, base):
    """Bytes of the quantized linear layers (weights + scales + zero points) / their BF16 bytes."""
    q = sum(BYTES[d] * _n(s) for k, (d, s) in tensors.items() if any(p in k for p in PROJ))
    b = sum(BYTES[d] * _n(s) for k, (d, s) in base.items() if any(p in k for p in PROJ))
    return q / b


def _n(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_bf16_baseline_is_a_plain_bf16_copy(embedded_compressed, embedded_model):
    ck = embedded_compressed("BF16")
    cfg = json.loads((ck / "config.json").read_text())
    assert "quantization_config" not in cfg
    t = _tensors(ck)
    assert {d for d, _ in t.values()} == {"BF16"}
    assert t.keys() == _tensors(embedded_model).keys()
    assert json.loads((ck / "ptq_deploy.json").read_text())["source"]["kind"] == "embedded"
    # bit for bit the source's weights, so vLLM runs it as it runs the source (the tiny BF16 copies load in vLLM
    # throughout the suite)
    from safetensors.torch import load_file

    a, b = load_file(str(ck / "model.safetensors")), load_file(str(embedded_model / "model.safetensors"))
    assert all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in b)


@pytest.mark.parametrize("scheme", list(EXPECT))
def test_every_scheme_writes_what_it_promises(embedded_compressed, embedded_model, scheme):
    ck = embedded_compressed(scheme)
    fmt, suffix, dtype, bits = EXPECT[scheme]
    s = schemes.get(scheme)
    qc = json.loads((ck / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    w = qc["config_groups"]["group_0"]["weights"]
    assert w["num_bits"] == s.weight_bits
    assert w["group_size"] == (64 if s.group_size else None)
    assert (qc["config_groups"]["group_0"]["input_activations"] is not None) == (s.activations != "bf16")
    t, base = _tensors(ck), _tensors(embedded_model)
    for layer in range(30):
        for p in PROJ:
            mod = f"model.layers.{layer}.{'mlp' if p in PROJ[4:] else 'self_attn'}.{p}"
            d, shape = t[f"{mod}.{suffix}"]
            out_f, in_f = base[f"{mod}.weight"][1]
            assert d == dtype
            if suffix == "weight_packed":
                assert shape == [out_f, in_f * bits // 32]
            else:
                assert shape == [out_f, in_f]
            scale = t[f"{mod}.weight_scale"][1]
            assert scale == ([out_f, in_f // 64] if s.group_size else [out_f, 1])
            assert f"{mod}.weight_zero_point" not in t  # symmetric (AWQ's zero points: test_compress)
    # the tied embedding / lm_head stays 16-bit (ignore: [lm_head])
    assert t["model.embed_tokens.weight"][0] == "BF16"
    ratio = _linear_ratio(t, base)
    expected = bits / 16
    assert expected <= ratio <= expected + (0.03 if s.group_size else 0.005), ratio
    meta = json.loads((ck / "ptq_deploy.json").read_text())
    assert meta["scheme"] == scheme and meta["group_size"] == (64 if s.group_size else None)
    assert (meta["calibration"] is not None) == s.calibration
    # inspect agrees: every targeted Linear proven quantized, bits/weight as the scheme promises
    rep = inspect_checkpoint(InspectConfig(checkpoint=ck))
    assert rep.ok, [f.message for f in rep.errors]
    extra = 16 / 64 if s.group_size else 16 / 576
    assert bits <= rep.linear_bits_per_weight <= bits + extra + 0.02, rep.linear_bits_per_weight
    assert rep.compression_ratio > (1.5 if bits == 8 else 2.2)


def test_gptq_int4_writes_the_group_wise_format(compressed, tiny_model):
    """INT4-W4A16 (GPTQ, group 64) on the tiny model: the format INT4-W4A16-RTN proves above, written by GPTQ's
    calibrated layer-by-layer pass, and proven by inspect."""
    ck = compressed("INT4-W4A16", group_size=64)
    qc = json.loads((ck / "config.json").read_text())["quantization_config"]
    w = qc["config_groups"]["group_0"]["weights"]
    assert (qc["format"], w["num_bits"], w["group_size"], w["symmetric"]) == ("pack-quantized", 4, 64, True)
    t, base = _tensors(ck), _tensors(tiny_model)
    mod = "model.layers.0.mlp.down_proj"
    out_f, in_f = base[f"{mod}.weight"][1]
    assert t[f"{mod}.weight_packed"] == ("I32", [out_f, in_f * 4 // 32])
    assert t[f"{mod}.weight_scale"][1] == [out_f, in_f // 64]
    assert json.loads((ck / "ptq_deploy.json").read_text())["calibration"] is not None  # GPTQ calibrated it
    rep = inspect_checkpoint(InspectConfig(checkpoint=ck))
    assert rep.ok, [f.message for f in rep.errors]
    assert 4 <= rep.linear_bits_per_weight <= 4 + 16 / 64 + 0.02


def test_kv_cache_fp8_writes_k_and_v_scales(compressed):
    ck = compressed("FP8-W8A8", kv_cache="fp8")
    qc = json.loads((ck / "config.json").read_text())["quantization_config"]
    assert qc["kv_cache_scheme"]["num_bits"] == 8 and qc["kv_cache_scheme"]["type"] == "float"
    t = _tensors(ck)
    for layer in range(2):
        for kv in ("k_scale", "v_scale"):
            d, shape = t[f"model.layers.{layer}.self_attn.{kv}"]
            assert shape in ([], [1])
    meta = json.loads((ck / "ptq_deploy.json").read_text())
    assert meta["kv_cache"] == "fp8" and meta["calibration"] is not None


def _greedy(engines, path, prompts):
    llm, info = engines.get(path)
    return info, engine.generate(llm, prompts, max_tokens=16, logprobs=True)


PROMPTS = ["The capital of France is", "It is a truth universally acknowledged that",
           "Water boils at a temperature of", "The first president of the United States was",
           "To make a cup of tea, you", "Elizabeth looked at Mr Darcy and"]


# FP8-W8A8 is left out: vLLM's CPU build emulates it with torch._scaled_mm, which on a CPU without a fast FP8 path
# costs many times a bf16 matmul (scripts/bench_cpu_matmul.py records how many), too slow for the suite on the
# embedded model. Its checkpoint format and its vLLM path are tested on the tiny model (test_compress.py).
# (the BF16 copy is the source bit for bit: test_bf16_baseline_is_a_plain_bf16_copy)
@pytest.mark.parametrize("scheme,min_first,min_prefix", [("INT8-W8A8", 4 / 6, 4)])
def test_vllm_greedy_output_stays_close_to_bf16(embedded_compressed, embedded_model, engines, scheme,
                                                min_first, min_prefix):
    """Agreement with the BF16 source, both run by vLLM with identical settings.

    Bounds: an 8-bit scheme perturbs logits by
    well under the typical top-1/top-2 gap of this model, so at most two of six first tokens may
    flip and greedy continuations must stay identical for >= 4 tokens on average (a broken
    checkpoint gives ~0 on both).
    """
    _, base = _greedy(engines, embedded_model, PROMPTS)
    info, gens = _greedy(engines, embedded_compressed(scheme), PROMPTS)
    assert info.quantization == "compressed-tensors"
    first = sum(g.token_ids[0] == b.token_ids[0] for g, b in zip(gens, base)) / len(PROMPTS)
    prefix = []
    for g, b in zip(gens, base):
        n = 0
        while n < min(len(g.token_ids), len(b.token_ids)) and g.token_ids[n] == b.token_ids[n]:
            n += 1
        prefix.append(n)
    print(f"{scheme}: first-token match {first:.2f}, mean identical prefix {sum(prefix) / len(prefix):.1f}, {prefix}")
    assert first >= min_first
    assert sum(prefix) / len(prefix) >= min_prefix
