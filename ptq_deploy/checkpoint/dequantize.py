"""A dense copy of a weight-only checkpoint: every quantized weight replaced by its dequantized value.

For W8A16 / W4A16 the dequantized copy computes what the quantized kernel computes with 16-bit
activations, so a vLLM build without that kernel (this AVX2 CPU) can still score its quality in
vLLM, against the same vLLM baseline. A scheme that also quantizes activations (NVFP4, MXFP4, ...) leaves
``ACTIVATIONS_FILE`` in the copy, and vLLM quantizes them as the scheme says (``engine.emulation``). transformers decompresses the compressed-tensors weights
(``dequantize=True``); they are stored in float32, where scale x integer is exact. The copy keeps
the source's ``ptq_deploy.json`` (with ``dequantized_from``), so it carries the source's model and
scheme names; its config keeps the source's dtype, so vLLM's "auto" resolves as for the source.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ptq_deploy.checkpoint import metadata as _meta
from ptq_deploy.checkpoint.files import weight_files
from ptq_deploy.errors import UsageError
from ptq_deploy.results.io import atomic_dir

# a copy of a scheme that quantizes activations: how (compressed-tensors' ``input_activations``, in the header)
# and each quantized Linear's static ``input_*`` tensors; vLLM quantizes them as the scheme says (``engine.emulation``)
ACTIVATIONS_FILE = "ptq_deploy_activations.st"  # safetensors format; not *.safetensors, which loaders take for weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def dequantize(src: Path, out: Path, force: bool = False) -> Path:
    """Write the dense copy of ``src`` to ``out`` (atomic); returns ``out``."""
    import torch  # heavy: runtime environment only
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    src, out = Path(src), Path(out)
    config = json.loads((src / "config.json").read_text())
    if (config.get("quantization_config") or {}).get("quant_method") != "compressed-tensors":
        raise UsageError(f"{src} is not a compressed-tensors checkpoint: nothing to dequantize")
    meta, problem = _meta.read(src)
    with atomic_dir(out, force=force) as tmp:
        loaded = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
        dense_cfg = AutoConfig.from_pretrained(src)
        if hasattr(dense_cfg, "quantization_config"):
            del dense_cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(dense_cfg, dtype=torch.float32)
        missing, _ = plain.load_state_dict(loaded.state_dict(), strict=False)  # scales etc. are left behind
        missing = [m for m in missing if not (m == "lm_head.weight" and dense_cfg.tie_word_embeddings)]
        if missing:
            raise UsageError(f"cannot dequantize {src}: no dense value for {missing[0]} ({len(missing)} tensors)")
        plain.tie_weights()
        plain.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        for key in ("torch_dtype", "dtype"):  # the source's dtype, so "auto" resolves as it does for the source
            if key in config:
                saved[key] = config[key]
        (tmp / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        if meta is not None:
            meta.model_copy(update={"dequantized_from": str(src.resolve())}).write(tmp)
        elif problem:
            raise UsageError(f"cannot dequantize {src}: {problem}")
        _activation_spec(src, config["quantization_config"], tmp)
    if not weight_files(out)[0]:
        raise UsageError(f"dequantizing {src} wrote no weights")
    return out


def _activation_spec(src: Path, qc: dict, out: Path) -> None:
    """For a scheme that quantizes activations: ``engine.emulation``'s spec in the copy (the arguments, and per
    quantized Linear its static ``input_*`` tensors as the checkpoint stores them), so vLLM quantizes them too."""
    import torch
    from safetensors import safe_open

    acts = [g.get("input_activations") for g in (qc.get("config_groups") or {}).values()]
    if not any(acts):
        return
    if any(a != acts[0] for a in acts):
        raise UsageError(f"cannot dequantize {src}: its config groups quantize activations differently")
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(src)[0]:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                layer, _, name = key.rpartition(".")
                if name == "weight_scale":  # a quantized Linear: its activations are quantized too
                    tensors.setdefault(f"{layer}.input_activations", torch.zeros(1))
                elif name.startswith("input_"):
                    tensors[key] = f.get_tensor(key)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / ACTIVATIONS_FILE),
              metadata={"input_activations": json.dumps(acts[0])})
