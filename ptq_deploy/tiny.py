"""A tiny random Llama with a real (trained) tokenizer, for tests and smoke checks without a hub."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(out: Path) -> Path:
    """A 2-layer Llama (hidden 192, head_dim 64) with a BPE tokenizer trained on the bundled corpus."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out
