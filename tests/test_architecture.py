"""A config's module tree, built on the meta device once and kept by config digest (checkpoint.architecture)."""

import json

from ptq_deploy.checkpoint.architecture import cache_path, module_tree


def test_a_kept_tree_is_the_built_one_and_a_damaged_one_is_rebuilt(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    config = json.loads((tiny_model / "config.json").read_text())
    built = module_tree(config)
    sizes = built.linear_input_sizes()  # the tiny Llama: hidden 192, MLP 512, 2 layers, its own lm_head
    assert sizes["model.layers.0.self_attn.q_proj"] == config["hidden_size"] == 192
    assert sizes["model.layers.1.mlp.down_proj"] == config["intermediate_size"] == 512
    assert len([n for n in sizes if n.startswith("model.layers.")]) == 7 * config["num_hidden_layers"]
    assert built.modules["lm_head"].tied_to is None and built.param_count > 0
    tied = module_tree({**config, "tie_word_embeddings": True})
    assert tied.modules["lm_head"].tied_to == "model.embed_tokens"
    assert tied.param_count == built.param_count - config["vocab_size"] * config["hidden_size"]
    kept = cache_path(config, built.transformers)
    assert kept.is_file() and kept.parent == tmp_path / "architectures"
    quantized = {**config, "quantization_config": {"quant_method": "compressed-tensors"}}
    assert cache_path(quantized, built.transformers) == kept  # quantization does not change the modules
    assert module_tree(quantized) == built  # read back
    kept.write_text("{not json")
    assert module_tree(config) == built and json.loads(kept.read_text())["param_count"] == built.param_count
    wider = {**config, "intermediate_size": 256}
    assert module_tree(wider).linear_input_sizes()["model.layers.0.mlp.down_proj"] == 256  # another config, built
