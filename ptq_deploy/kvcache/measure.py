"""One sample, every method: a full-precision prefill, then each method's cache read back by later tokens.

- ``passkey``: the context (key inside) is prefilled; the question and the expected answer (`` 12345``)
  are one chunk that attends to the method's cache: the sample is correct when every answer token is
  the argmax at its position, i.e. exactly when greedy decoding would answer the key (one forward per
  method instead of one per answer token; the greedy answer is recorded up to its first wrong token).
- ``chapter``: all but the last ``scored_tokens`` of a chapter are prefilled; (a) long-document NLL of
  the last tokens, fed in chunks that attend to the cache (never one pass over the whole text), and
  (b) a greedy continuation of the prefix, scored by the baseline from the full-precision prefix cache,
  compared token by token with the baseline's own continuation.

Every method's first forward after the prefill is compared with the baseline's on the same input
(max / mean absolute logit difference, KL of the next-token distributions, bit-identical or not).
The baseline (``none``) must come first in ``methods``.
"""

from __future__ import annotations

import time

import torch
from transformers.cache_utils import DynamicCache

from ptq_deploy.kvcache.cache import buffer_bytes, cache_bytes, clone, convert
from ptq_deploy.kvcache.longctx import PasskeySample
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import Samples

class Proof:
    """The first post-prefill logits of each method vs the baseline's (kept per sample)."""

    def __init__(self):
        self.base: torch.Tensor | None = None

    def record(self, s: Samples, sid: str, logits: torch.Tensor, baseline: bool) -> None:
        if baseline:
            self.base = logits
        diff = (logits - self.base).abs()
        s.logit_max_abs[sid] = float(diff.max())
        s.logit_mean_abs[sid] = float(diff.mean())
        lp, lq = torch.log_softmax(self.base.float(), -1), torch.log_softmax(logits.float(), -1)
        s.kl[sid] = float((lp.exp() * (lp - lq)).sum(-1).mean())
        s.identical[sid] = bool(torch.equal(logits, self.base))


def prefill(model, ids: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    cache = DynamicCache()
    out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[0, -1]


def _record_bytes(s: Samples, sid: str, cache, tokens: int, buffers: dict[str, float]) -> None:
    s.bytes_per_token[sid] = cache_bytes(cache) / tokens
    buffers[sid] = buffer_bytes(cache) / tokens


def greedy(model, cache, first: torch.Tensor, n: int) -> list[int]:
    """``n`` tokens: ``first`` (the argmax already computed) then n-1 decode steps reading ``cache``."""
    out = [int(first)]
    for _ in range(n - 1):
        logits = model(torch.tensor([[out[-1]]]), past_key_values=cache, use_cache=True).logits[0, -1]
        out.append(int(logits.argmax()))
    return out


def passkey(model, tok, sample: PasskeySample, methods: list[KVMethod], samples: dict[str, Samples],
            buffers: dict[str, dict[str, float]], times: dict[str, float]) -> None:
    ctx = tok(sample.context, return_tensors="pt").input_ids
    q = tok(sample.question, return_tensors="pt", add_special_tokens=False).input_ids
    answer = tok(" " + sample.key, return_tensors="pt", add_special_tokens=False).input_ids
    fp, _ = prefill(model, ctx)
    proof = Proof()
    for m in methods:
        t0 = time.perf_counter()
        s = samples[m.name]
        cache = convert(fp, m)
        _record_bytes(s, sample.id, cache, ctx.shape[1], buffers[m.name])
        logits = model(torch.cat([q, answer], dim=1), past_key_values=cache, use_cache=True).logits[0]
        proof.record(s, sample.id, logits[:q.shape[1]], m.baseline)
        greedy_ids = logits[q.shape[1] - 1:-1].argmax(-1)  # what greedy decoding picks at each answer position
        hits = (greedy_ids == answer[0]).tolist()
        upto = hits.index(False) + 1 if False in hits else len(hits)
        s.passkey[sample.id], s.passkey_answer[sample.id] = all(hits), tok.decode(greedy_ids[:upto])
        times[m.name] += time.perf_counter() - t0


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))


def chapter(model, tok, doc_id: str, text: str, scored: int, chunk: int, gen_tokens: int,
            methods: list[KVMethod], samples: dict[str, Samples], buffers: dict[str, dict[str, float]],
            times: dict[str, float]) -> None:
    ids = tok(text, return_tensors="pt").input_ids
    p = ids.shape[1] - scored
    fp, last = prefill(model, ids[:, :p])
    proof = Proof()
    base_cont: list[int] = []
    for m in methods:
        t0 = time.perf_counter()
        s = samples[m.name]
        # (a) long document: ids[p:-1] in chunks predict ids[p+1:], every chunk reading the cache
        cache = convert(fp, m)
        fresh = clone(cache)  # for (b)
        _record_bytes(s, doc_id, cache, p, buffers[m.name])
        nll, n = 0.0, 0
        for start in range(p, ids.shape[1] - 1, chunk):
            x = ids[:, start:min(start + chunk, ids.shape[1] - 1)]
            logits = model(x, past_key_values=cache, use_cache=True).logits[0]
            if start == p:
                proof.record(s, doc_id, logits, m.baseline)
            nll += _nll(logits, ids[0, start + 1:start + 1 + x.shape[1]])
            n += x.shape[1]
        s.longdoc[doc_id] = (nll, n)
        # (b) generation: greedy continuation from the same prefix, in a fresh copy of the method's cache
        cont = greedy(model, fresh, last.argmax(), gen_tokens)
        times[m.name] += time.perf_counter() - t0
        if m.baseline:
            base_cont = cont
        scorer = convert(fp, methods[0])  # the baseline scores every continuation from full precision
        logits = model(torch.tensor([cont[:-1]]), past_key_values=scorer, use_cache=True).logits[0]
        gen_nll = _nll(last[None], torch.tensor(cont[:1])) + _nll(logits, torch.tensor(cont[1:]))
        s.generation[doc_id] = (gen_nll, len(cont))
        s.agreement[doc_id] = sum(a == b for a, b in zip(cont, base_cont)) / len(cont)
