"""Random causal LMs without a hub: tiny ones with a real (trained) tokenizer, for tests and smoke checks, and
any shipped config's shape at full size (``build_from_config``: speed, memory and kernels are the real model's,
quality is none), for the GPU's roofline checks.

    python -m ptq_deploy.tiny --config CONFIG.json --tokenizer DIR --out DIR [--device cuda] [--shrink]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Literal

Arch = Literal["llama", "qwen2"]


def build_tiny(out: Path, arch: Arch = "llama") -> Path:
    """A 2-layer model (hidden 192, head_dim 64, 3 query heads on 1 KV head) with a BPE tokenizer trained on
    the bundled corpus. ``qwen2``: Qwen2's architecture (biased q/k/v projections) at the same size."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from ptq_deploy.data import BUNDLED, _read_file

    texts = [r["text"] for r in _read_file(BUNDLED["austen"])[:300]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<pad>")
    torch.manual_seed(0)
    shape = dict(vocab_size=tok.get_vocab_size(), hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=1024,
                 bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, head_dim=64))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))  # head_dim = hidden / heads = 64
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    model.to(torch.bfloat16).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def build_tiny_llama(out: Path) -> Path:
    return build_tiny(out, "llama")


def build_from_config(config: Path, out: Path, tokenizer: Path, device: str = "cpu", shrink: bool = False) -> Path:
    """A model of ``config``'s architecture and shape (a shipped ``config.json``) with random weights, initialised
    on ``device`` in the config's dtype and saved as safetensors with ``tokenizer``'s files (a smaller vocabulary
    than the model's is fine: its ids are all valid). ``shrink``: two layers of width 256, the same architecture
    and vocabulary, for a dry run on a CPU."""
    import torch  # heavy: only where a model is built
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads(Path(config).read_text())
    if shrink:
        heads, kv = 4, cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        cfg.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=heads,
                   num_key_value_heads=max(1, heads * kv // cfg["num_attention_heads"]), head_dim=64)  # its GQA
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    dtype = getattr(torch, str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", ""))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.save_pretrained(out)
    for f in Path(tokenizer).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "chat_template")):
            shutil.copy2(f, Path(out) / f.name)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ptq_deploy.tiny", description=build_from_config.__doc__.split(".")[0])
    ap.add_argument("--config", type=Path, required=True, help="a config.json (ptq_deploy/data/model_configs/)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a directory with a tokenizer's files")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu", help="where the weights are initialised (cuda: seconds for 8B)")
    ap.add_argument("--shrink", action="store_true", help="two layers of width 256 (a dry run)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    out = build_from_config(args.config, args.out, args.tokenizer, args.device, args.shrink)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"[ptq-deploy] random {args.config.stem} -> {out}: {size / 1e9:.2f} GB of weights in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
