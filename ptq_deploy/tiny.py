"""Tiny random causal LMs with a real (trained) tokenizer, for tests and smoke checks without a hub."""

from __future__ import annotations

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
