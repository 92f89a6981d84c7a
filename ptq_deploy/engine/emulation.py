"""Activation quantization emulated inside vLLM, for the dense copy of a scheme vLLM has no kernel for here.

A dense copy (``checkpoint.dequantize``) holds the dequantized weights; when its scheme also quantizes
activations (NVFP4, MXFP4, MXFP8, W4AFP8, FP8-BLOCK ...) the copy carries its ``ACTIVATIONS_FILE``: the
compressed-tensors ``input_activations`` arguments, the Linear layers they apply to and each layer's static
activation tensors (NVFP4's ``input_global_scale``, a static ``input_scale``). vLLM loads this module as a general
plugin (the ``vllm.general_plugins`` entry point, in every vLLM process); when ``ENV`` names such a file, each
unquantized Linear of the model gets the quantizer of its checkpoint layers, and its input passes through
compressed-tensors' own ``forward_quantize`` before the matmul: what transformers does with the real checkpoint
(lm-eval's ``hf`` backend), so the two score alike (``tests/test_float_formats``).

vLLM fuses q/k/v (``qkv_proj``) and gate/up (``gate_up_proj``) into one Linear fed by one input; their checkpoint
layers must then quantize that input alike (same arguments and static tensors, as calibration on the same input
gives), else the engine refuses to load. Eager mode only: the engine settings force it (``args.resolve``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ptq_deploy.checkpoint.dequantize import ACTIVATIONS_FILE

ENV = "PTQ_DEPLOY_EMULATE_ACTIVATIONS"  # the spec file of the model being loaded; unset: no emulation
PLUGIN = "ptq_deploy_activations"  # the entry point's name (pyproject.toml)
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def spec_file(model: str | Path) -> Path | None:
    """The activation spec of a local dense copy, or None."""
    path = Path(model) / ACTIVATIONS_FILE
    return path if path.is_file() else None


def installed() -> bool:
    """Is the plugin registered in this environment (``pip install -e .`` / the wheel)?"""
    return any(ep.name == PLUGIN for ep in metadata.entry_points(group="vllm.general_plugins"))


@lru_cache(maxsize=4)
def _spec(path: str):
    """(compressed-tensors QuantizationArgs, {layer: {tensor name: value}}) of a spec file."""
    from compressed_tensors.quantization import QuantizationArgs
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        args = QuantizationArgs.model_validate(json.loads(f.metadata()["input_activations"]))
        layers: dict[str, dict] = {}
        for key in f.keys():
            layer, name = key.rsplit(".", 1)
            layers.setdefault(layer, {})
            if name != "input_activations":
                layers[layer][name] = f.get_tensor(key)
    return args, layers


def _checkpoint_layers(prefix: str, layers: dict) -> list[str]:
    """The checkpoint layers a vLLM Linear (``prefix``) computes: itself, or the ones vLLM fused into it."""
    if prefix in layers:
        return [prefix]
    parent, _, leaf = prefix.rpartition(".")
    return [f"{parent}.{part}" for part in FUSED.get(leaf, ()) if f"{parent}.{part}" in layers]


def quantizer_for(prefix: str, path: str):
    """A ``torch.nn.Module`` holding the layer's static activation tensors, or None where the checkpoint left the
    layer 16-bit (``ignore``). Raises when fused layers would quantize their shared input differently."""
    import torch
    from compressed_tensors.quantization import QuantizationStatus

    args, layers = _spec(path)
    names = _checkpoint_layers(prefix, layers)
    if not names:
        return None
    first = layers[names[0]]
    for other in names[1:]:
        if first.keys() != layers[other].keys() or any(not torch.equal(first[k], layers[other][k]) for k in first):
            raise ValueError(f"activation emulation: vLLM fuses {', '.join(names)} into {prefix}, but the checkpoint "
                             "quantizes their common input differently")
    module = torch.nn.Module()
    module.quantization_status = QuantizationStatus.FROZEN
    for k, v in first.items():
        module.register_buffer(k, v.clone())
    module.args, module.layers = args, names
    return module


def register() -> None:
    """vLLM general plugin: wrap the unquantized Linear method (once per process; a no-op unless ``ENV`` names a
    spec when a model's weights are processed)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    if getattr(UnquantizedLinearMethod, "_ptq_deploy_wrapped", False):
        return
    after_loading, apply = UnquantizedLinearMethod.process_weights_after_loading, UnquantizedLinearMethod.apply

    def process_weights_after_loading(self, layer):
        path = os.environ.get(ENV)
        quantizer = quantizer_for(getattr(layer, "prefix", ""), path) if path else None
        if quantizer is not None:
            weight = getattr(layer, "weight", None)
            layer.ptq_deploy_input_quantizer = quantizer.to(weight.device) if weight is not None else quantizer
        return after_loading(self, layer)

    def emulated_apply(self, layer, x, bias=None):
        quantizer = getattr(layer, "ptq_deploy_input_quantizer", None)
        if quantizer is not None:
            from compressed_tensors.quantization.lifecycle.forward import forward_quantize

            x = forward_quantize(quantizer, x, "input", quantizer.args)
        return apply(self, layer, x, bias)

    UnquantizedLinearMethod.process_weights_after_loading = process_weights_after_loading
    UnquantizedLinearMethod.apply = emulated_apply
    UnquantizedLinearMethod._ptq_deploy_wrapped = True
