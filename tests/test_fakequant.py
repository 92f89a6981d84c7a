"""POT / APOT (quality-only, fake-quantized) and the low-bit W3A16 / W2A16 schemes: the grids, the scale search,
compress -> inspect on the tiny model (the level check passes, and fails on tampered copies), and int3 as the
compress environment packs it read back by the runtime's HF eval backend."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptq_deploy.checkpoint import ct_compat
from ptq_deploy.checkpoint import grid
from ptq_deploy.compress import fakequant, schemes
from ptq_deploy.errors import UsageError
from ptq_deploy.inspection import InspectConfig, inspect_checkpoint

GRIDS = [("pot", 4, 1), ("pot", 3, 1), ("pot", 2, 1), ("apot", 4, 2), ("apot", 3, 2), ("apot", 5, 2), ("apot", 4, 3)]
GROUP = 64  # divides every input size of the tiny model (192, 512)


def _powers(x: float, top: float) -> int:
    """How many powers of two sum to ``x * top`` (exactly representable: counted from its binary digits)."""
    m, e = math.frexp(x * top)
    bits = int(round(m * 2 ** 53))
    assert abs(bits - m * 2 ** 53) < 1e-3, x
    return bin(bits).count("1")


@pytest.mark.parametrize("method,bits,k", GRIDS)
def test_grids_are_powers_of_two_and_fit_their_bits(method, bits, k):
    levels = grid.magnitudes(method, bits, k)
    assert levels == sorted(set(levels)) and levels[0] == 0 and levels[-1] == 1
    assert 2 * len(levels) - 1 <= 2 ** bits  # +/- levels, one zero
    if method == "pot":
        assert len(levels) == 2 ** (bits - 1)
        assert all(_powers(x, 1.0) == 1 for x in levels[1:])  # every level a single power of two
    else:  # before normalization by the largest sum (one of each term: 2^0 + 2^-1 + ...), at most k powers of two
        top = sum(2.0 ** -i for i in range(k))
        assert max(_powers(x, top) for x in levels[1:]) == k
        assert grid.magnitudes("apot", bits, 1) == grid.magnitudes("pot", bits)  # one term: POT


def test_apot_levels_are_sums_of_k_powers_of_two():
    # 4 bits, 2 terms: term 0 in {0, 1, 1/4, 1/16}, term 1 in {0, 1/2}; normalized by the largest sum 3/2
    assert grid.magnitudes("apot", 4, 2) == pytest.approx(sorted(
        {(a + b) / 1.5 for a in (0, 1, 0.25, 0.0625) for b in (0, 0.5)}))


def test_scale_search_and_level_check_on_a_weight():
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.02
    errors = {}
    for method, bits, k in [("pot", 4, 1), ("apot", 4, 2), ("pot", 3, 1), ("apot", 3, 2)]:
        spec = grid.FakeQuantSpec(method=method, bits=bits, group_size=GROUP, k_terms=k)
        levels = grid.magnitudes(method, bits, k)
        q = fakequant.quantize_weight(w, spec, levels).to(torch.bfloat16)
        fq = grid.FakeQuant(**spec.model_dump(), levels=levels, layers=1, params=w.numel(), code_bytes=0,
                                 scale_bytes=0, stored_bytes=0, weight_rel_error=0.0)
        check = grid.check_levels(q, fq)
        assert check.problems == [] and check.groups == w.numel() // GROUP and check.max_distinct <= 2 ** bits
        errors[(method, bits)] = float((q.float() - w).norm() / w.norm())
        # the search beats the plain max-magnitude scale (clipping ratio 1) on the squared error
        x = w.reshape(-1, GROUP)
        scale = x.abs().amax(1, keepdim=True).to(torch.bfloat16).float()
        plain = grid.snap(x / scale, grid.signed_grid(levels)) * scale
        assert float((q.float().reshape(-1, GROUP) - x).norm()) < float((plain - x).norm())
        bad = q.clone()
        bad[5, 7] = bad[5, 7] * 0.9 + bad[5, :GROUP].abs().max() * 0.03  # one value off the grid
        assert grid.check_levels(bad, fq).off_grid == 1
        noisy = (q.float() + torch.randn_like(w) * 1e-4).to(torch.bfloat16)  # every group: many distinct values
        assert grid.check_levels(noisy, fq).too_many > 0
    assert errors[("pot", 4)] < errors[("pot", 3)] and errors[("apot", 4)] < errors[("apot", 3)]
    assert errors[("apot", 4)] < errors[("pot", 4)]  # APOT's levels sit closer to a bell-shaped weight


@pytest.mark.parametrize("bad,match", [
    ({"quality_only": False}, "quality_only: true"),
    ({"k_terms": 4}, "1 to 3 terms"),
    ({"recipe": {"s": {}}}, "no recipe"),
])
def test_fake_quant_scheme_validation(bad, match):
    good = schemes.get("APOT-W4A16").model_dump(exclude={"source"})
    schemes.Scheme(**good)
    with pytest.raises(UsageError, match=match):
        schemes.Scheme(**{**good, **bad})
    with pytest.raises(UsageError, match="need method: pot"):
        schemes.Scheme(**{**schemes.get("INT3-W3A16-RTN").model_dump(exclude={"source"}), "bits": 3})
    with pytest.raises(UsageError, match="needs an llmcompressor recipe"):
        schemes.get("POT-W4A16").resolve(kv_cache="fp8")


# ---------------------------------------------------------------- compress -> inspect on the tiny model
@pytest.mark.parametrize("scheme,bits", [("POT-W4A16", 4), ("APOT-W3A16", 3)])
def test_compress_and_inspect_a_fake_quant_checkpoint(compressed, tiny_model, scheme, bits):
    ck = compressed(scheme, group_size=GROUP)
    assert "quantization_config" not in json.loads((ck / "config.json").read_text())  # loads as dense
    meta = json.loads((ck / "ptq_deploy.json").read_text())["fake_quant"]
    assert meta["bits"] == bits and meta["group_size"] == GROUP and meta["layers"] == 14  # lm_head kept 16-bit
    assert meta["code_bytes"] == meta["params"] * bits // 8 and meta["scale_bytes"] == 2 * meta["params"] // GROUP
    assert 0 < meta["weight_rel_error"] < 0.5
    rep = inspect_checkpoint(InspectConfig(checkpoint=ck))
    assert rep.ok, rep.errors
    info = {f.code: f.message for f in rep.findings}
    method = scheme.split("-")[0]
    assert info["quality-only"].startswith(f"quality only - weights are on a {bits}-bit {method} grid, stored dense; "
                                           "not a deployable format")
    assert f"{bits + 16 / GROUP:.3f} bits/weight" in info["quality-only"]
    assert "14/14 targeted Linear layers carry" in info["proof"]
    assert rep.effective_bytes == rep.tensor_bytes - meta["stored_bytes"] + meta["code_bytes"] + meta["scale_bytes"]
    assert rep.hardware.support.runnable  # a dense model to vLLM
    # and the values really moved: every group of a targeted weight holds at most 2^bits values, the original not
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(str(ck / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    distinct = [len(torch.unique(g)) for g in after[name].reshape(-1, GROUP)]
    assert max(distinct) <= 2 ** bits < min(len(torch.unique(g)) for g in before[name].reshape(-1, GROUP))


def _tampered(src, dst, edit):
    shutil.copytree(src, dst)
    t = load_file(str(dst / "model.safetensors"))
    edit(t)
    save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return inspect_checkpoint(InspectConfig(checkpoint=dst))


def test_the_level_check_fails_on_tampered_copies(compressed, tiny_model, tmp_path):
    ck = compressed("POT-W4A16", group_size=GROUP)
    name = "model.layers.1.self_attn.o_proj.weight"

    def nudge(t):  # one value moved between two levels
        g = t[name][3, :GROUP]
        t[name][3, 10] = g.abs().max() * 0.7

    rep = _tampered(ck, tmp_path / "one-value", nudge)
    err = next(f for f in rep.errors if f.code == "inconsistent-layers")
    assert "1 of 14 targeted Linear layers do not match the declared grid" in err.message
    assert "1 of 576 groups have values off the declared grid" in err.message and "o_proj" in err.message

    original = load_file(str(tiny_model / "model.safetensors"))
    rep = _tampered(ck, tmp_path / "dense-again", lambda t: t.update(  # the unquantized weights back in place
        {k: v for k, v in original.items() if k.endswith("proj.weight")}))
    err = next(f for f in rep.errors if f.code == "claimed-scheme-not-in-tensors")
    assert "ptq_deploy.json declares a 4-bit POT grid" in err.message and "more than the allowed" in str(rep.linears)

    wrong = tmp_path / "declares-3-bits"  # 4-bit weights declared as a 3-bit grid
    shutil.copytree(ck, wrong)
    meta = json.loads((wrong / "ptq_deploy.json").read_text())
    meta["fake_quant"].update(bits=3, levels=grid.magnitudes("pot", 3))
    (wrong / "ptq_deploy.json").write_text(json.dumps(meta))
    rep = inspect_checkpoint(InspectConfig(checkpoint=wrong))
    assert {"claimed-scheme-not-in-tensors", "provenance-mismatch"} <= {f.code for f in rep.errors}


# ---------------------------------------------------------------- W3A16: written by compressed-tensors 0.19
def _pack_dense(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Reference packing of compressed-tensors >= 0.19: value i of a row at bit i * bits, unsigned (+ 2^(bits-1))."""
    rows, n = values.shape
    words = torch.zeros(rows, math.ceil(n * bits / 32), dtype=torch.int64)
    for i in range(n):
        u = (values[:, i].to(torch.int64) + (1 << (bits - 1)))
        start = i * bits
        words[:, start // 32] |= (u << (start % 32)) & 0xFFFFFFFF
        if start % 32 + bits > 32:
            words[:, start // 32 + 1] |= u >> (32 - start % 32)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def test_dense_int3_unpack_matches_the_dense_layout():
    torch.manual_seed(1)
    q = torch.randint(-4, 4, (5, 192), dtype=torch.int8)
    packed = _pack_dense(q, 3)  # 18 words a row; 32 // 3 = 10 values a word would take 20
    assert packed.shape == (5, 18) and ct_compat.is_dense(18, 3, 192) and not ct_compat.is_dense(20, 3, 192)
    assert not ct_compat.is_dense(7, 3, 70) and not ct_compat.is_dense(48, 4, 384)  # same width / same layout
    assert torch.equal(ct_compat.unpack_dense(packed, 3, 192), q)
    assert torch.equal(ct_compat.unpack_dense(packed.T.contiguous(), 3, 192, packed_dim=0), q.T)


def test_int3_checkpoint_is_proven_refused_by_vllm_and_read_by_the_hf_backend(compressed, tiny_model):
    from ptq_deploy.eval.backend import open_lm

    ck = compressed("INT3-W3A16-RTN", group_size=GROUP)
    rep = inspect_checkpoint(InspectConfig(checkpoint=ck))
    assert rep.ok and rep.quantization.weight_kind == "int3"
    proof = next(f.message for f in rep.findings if f.code == "proof")
    assert "int3 packed in I32 (dense bit layout, compressed-tensors >= 0.19)" in proof
    assert not rep.hardware.support.runnable and "uint3b4" in rep.hardware.support.reason
    with open_lm("hf", dict(pretrained=str(ck), dtype="float32", device="cpu", max_length=64, batch_size=1)) as (lm, _):
        lm.model(torch.tensor([[1, 5, 9, 13]]))  # transformers decompresses at the first forward
        w = lm.model.model.layers[0].mlp.down_proj.weight.detach()
    ref = load_file(str(tiny_model / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"].float()
    assert w.shape == ref.shape  # the runtime's compressed-tensors alone would unpack 510 of 512 inputs
    assert max(len(torch.unique(g)) for g in w.reshape(-1, GROUP)) <= 8
    assert float((w - ref).norm() / ref.norm()) < 0.35  # int3 error, not a scrambled unpack (~1.4)
