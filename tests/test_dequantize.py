"""Weight-only schemes scored in vLLM on their dequantized weights: the dense copy is what the
quantized checkpoint computes (per-document scores equal lm-eval's HF backend on the quantized
checkpoint, within float tolerance), and it keeps the cell's names."""

import pytest
from conftest import austen_ppl_per_document, worst_relative_difference
from safetensors import safe_open

from ptq_deploy import checkpoint
from ptq_deploy.checkpoint.dequantize import dequantize
from ptq_deploy.errors import UsageError

pytestmark = pytest.mark.integration


def test_dense_copy_scores_what_the_quantized_checkpoint_scores(compressed, tiny_model, tmp_path):
    src = compressed("INT4-W4A16-RTN", group_size=64)
    dense = dequantize(src, tmp_path / "dense")
    ck = checkpoint.read(dense)
    assert ck.quantization.method is None and ck.quantization.dense_dtype == "bfloat16"
    assert ck.scheme_name == "INT4-W4A16-RTN" and ck.model_name == tiny_model.name
    assert ck.metadata.dequantized_from == str(src.resolve())
    # the copy holds at most 16 distinct values per group of 64 weights: really the int4 grid
    entry = ck.tensors["model.layers.0.mlp.down_proj.weight"]
    assert entry.dtype == "F32"
    with safe_open(str(dense / entry.file), "pt") as f:
        groups = f.get_tensor(entry.name).reshape(-1, 64)
    assert max(len(g.unique()) for g in groups) <= 16 < len(groups.unique())

    # float32 on both backends: the comparison is of what is computed, not of bf16 rounding (on an AVX-512
    # CPU dtype auto is bf16, and the two backends' own gap then reaches ~2e-3)
    def per_doc(ckpt, backend):
        return austen_ppl_per_document(ckpt, backend, max_model_len=512)

    worst_rel = worst_relative_difference

    hf_q, hf_quantized = per_doc(src, "hf")
    _, hf_dense = per_doc(dense, "hf")
    vl, vllm_dense = per_doc(dense, "vllm")
    assert vl.dequantized_from == str(src.resolve()) and vl.identity.scheme == hf_q.identity.scheme
    # the copy computes what the quantized checkpoint computes (same backend: float rounding only)
    assert worst_rel(hf_quantized, hf_dense) < 1e-5
    # across backends it differs by no more than the two backends differ on the unquantized model
    backend_gap = worst_rel(per_doc(tiny_model, "hf")[1], per_doc(tiny_model, "vllm")[1])
    assert worst_rel(hf_quantized, vllm_dense) < max(2 * backend_gap, 1e-5) < 2e-3, backend_gap


def test_only_compressed_tensors_checkpoints_dequantize(tiny_model, tmp_path):
    with pytest.raises(UsageError, match="nothing to dequantize"):
        dequantize(tiny_model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
