"""The fixed workload every benchmark runs: ``num_prompts`` prompts of ``input_len`` tokens asking
for exactly ``output_len`` tokens (``ignore_eos``).

``random`` is vLLM's own ``RandomDataset`` (the prompts ``vllm bench throughput/serve
--dataset-name random`` use for the same seed); ``text`` cuts windows of ``input_len`` tokens from
the bundled Austen corpus (real text, so the model's attention patterns are realistic).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from ptq_deploy.errors import UsageError


class Request(BaseModel):
    prompt: str
    prompt_len: int  # tokens the engine will see (tokenised like vLLM does, special tokens included)
    output_len: int


class WorkloadInfo(BaseModel):
    dataset: str
    seed: int
    num_prompts: int
    input_len: int
    output_len: int
    prompt_lens: list[int]
    total_prompt_tokens: int
    total_output_tokens_requested: int


def load_tokenizer(checkpoint: str):
    """The checkpoint's tokenizer, as vLLM loads it; one clear error when the checkpoint has none."""
    from vllm.tokenizers import get_tokenizer  # heavy

    try:
        return get_tokenizer(checkpoint)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load a tokenizer from {checkpoint} (are its tokenizer files there? "
                         f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]})") from None


def _random(tokenizer, n: int, input_len: int, output_len: int, seed: int) -> list[str]:
    from vllm.benchmarks.datasets import RandomDataset

    reqs = RandomDataset(random_seed=seed).sample(tokenizer=tokenizer, num_requests=n, prefix_len=0,
                                                  input_len=input_len, output_len=output_len, range_ratio=0.0)
    return [r.prompt for r in reqs]


def _text(tokenizer, n: int, input_len: int, seed: int) -> list[str]:
    from ptq_deploy.data import BUNDLED, _read_file

    rows = [r["text"] for r in _read_file(BUNDLED["austen"])]
    ids = tokenizer("\n\n".join(rows), add_special_tokens=False).input_ids
    body = max(1, input_len - int(tokenizer.num_special_tokens_to_add()))
    if len(ids) < body + n:
        raise UsageError(f"bundled text has {len(ids)} tokens; too few for {n} prompts of {input_len}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - body - 1, size=n)
    out = []
    for s in starts:
        window = ids[int(s):int(s) + body]
        text = tokenizer.decode(window)
        # decode/encode may not round-trip; trim to the target length like vLLM's RandomDataset does
        re = tokenizer(text, add_special_tokens=False).input_ids[:body]
        out.append(tokenizer.decode(re))
    return out


def build(tokenizer, dataset: str, n: int, input_len: int, output_len: int, seed: int) -> list[Request]:
    if dataset == "random":
        prompts = _random(tokenizer, n, input_len, output_len, seed)
    elif dataset == "text":
        prompts = _text(tokenizer, n, input_len, seed)
    else:
        raise UsageError(f"unknown dataset {dataset!r}; choose random or text")
    return [Request(prompt=p, prompt_len=len(tokenizer(p).input_ids), output_len=output_len) for p in prompts]


def info(reqs: list[Request], dataset: str, seed: int, input_len: int, output_len: int) -> WorkloadInfo:
    return WorkloadInfo(dataset=dataset, seed=seed, num_prompts=len(reqs), input_len=input_len, output_len=output_len,
                        prompt_lens=[r.prompt_len for r in reqs],
                        total_prompt_tokens=sum(r.prompt_len for r in reqs),
                        total_output_tokens_requested=sum(r.output_len for r in reqs))
