"""vLLM's own KV-cache dtypes, measured where they are served: one engine per ``kv_cache_dtype``, the same
samples as the transformers track, every score read through the engine's paged cache.

- **passkey**: context + question as the prompt, the answer decoded greedily (each answer token a decode
  step reading the cache); correct when the decoded tokens are the key's.
- **long document**: a whole chapter as one prompt with prompt logprobs, scored on its last
  ``scored_tokens``. The engine prefills in chunks of ``chunk`` tokens (``max_num_batched_tokens``), so the
  scored tokens attend to the rest of the chapter only through the cache that earlier chunks wrote.
- **generation**: a greedy continuation of the chapter's prefix; the baseline engine scores every method's
  continuation, which is compared token by token with the baseline's own.
- **proof**: on the same input, the engine's logprobs against the baseline engine's: the top-``PROOF_TOPK``
  of the first answer position (passkey) and the scored tokens (chapters); a method whose logprobs equal
  the baseline's on every sample read nothing the dtype changed, and is an error finding
  (``analysis.findings``), never a row.
- **cost**, in the same engine: KV capacity (tokens vLLM allocated) and the bytes per token of its
  allocation, sequences that fit at 4k and 32k, decode time per output token at each context length (batch
  1, from vLLM's own first- and last-token timestamps of each request), and tokens/s with ``concurrency``
  sequences at the longest context.

Prefix caching is off in these engines: every request writes its own K/V and reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ptq_deploy import checkpoint, engine
from ptq_deploy.engine import kernels
from ptq_deploy.engine.config import EngineConfig
from ptq_deploy.kvcache.config import ServedSettings
from ptq_deploy.kvcache.longctx import PasskeySample
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import Samples, ServedCost
from ptq_deploy.perf.memory import concurrent_sequences
from ptq_deploy.perf.offline import kv_capacity
from ptq_deploy.stats import Summary


def prompt_logprobs(llm, prompts: list[list[int]]) -> list[list[float]]:
    """Per prompt, per position from 1 on: the logprob of the prompt's own token there."""
    from vllm import SamplingParams

    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
    return [[e[t].logprob for e, t in zip(o.prompt_logprobs[1:], p[1:])] for o, p in zip(outs, prompts)]


def greedy(llm, prompts: list[list[int]], n: int) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


PROOF_TOPK = 20  # logprobs compared at a passkey's first answer position


class Inputs:
    """The token ids every engine reads: passkey prompts (context + question) with their answers, and
    chapters (prefix | scored tail), tokenized once with the checkpoint's tokenizer."""

    def __init__(self, tok, items: list[PasskeySample], docs: list[tuple[str, str]], scored: int):
        self.passkey: list[tuple[str, list[int], list[int]]] = []  # (id, prompt ids, answer ids)
        for it in items:
            ctx = tok(it.context).input_ids
            q = tok(it.question, add_special_tokens=False).input_ids
            a = tok(" " + it.key, add_special_tokens=False).input_ids
            self.passkey.append((it.id, ctx + q, a))
        self.docs = [(doc_id, tok(text).input_ids) for doc_id, text in docs]
        self.scored = scored

    @property
    def longest(self) -> int:
        return max([len(p) + len(a) for _, p, a in self.passkey] + [len(d) for _, d in self.docs] + [1])


def _proof(s: Samples, sid: str, lps: list[float], base: list[float] | None) -> None:
    if base is None:  # the baseline itself
        base = lps
    diff = [abs(a - b) for a, b in zip(lps, base)]
    s.logit_max_abs[sid] = max(diff)
    s.logit_mean_abs[sid] = sum(diff) / len(diff)
    s.identical[sid] = lps == base


def answers(llm, x: Inputs) -> dict[str, tuple[list[int], dict[int, float]]]:
    """Per passkey prompt: the greedy answer (as many tokens as the key has) and the top-``PROOF_TOPK``
    logprobs of its first position."""
    from vllm import SamplingParams

    params = [SamplingParams(max_tokens=len(a), temperature=0.0, ignore_eos=True, logprobs=PROOF_TOPK)
              for _, _, a in x.passkey]
    outs = llm.generate([{"prompt_token_ids": p} for _, p, _ in x.passkey], params, use_tqdm=False)
    got = {}
    for (sid, _, _), o in zip(x.passkey, outs):
        c = o.outputs[0]
        got[sid] = (list(c.token_ids), {t: lp.logprob for t, lp in (c.logprobs[0] if c.logprobs else {}).items()})
    return got


class Scores:
    """What one engine scored, kept until the baseline's engine has run (the proof compares the two)."""

    def __init__(self):
        self.passkey: dict[str, tuple[list[int], dict[int, float]]] = {}
        self.docs: dict[str, list[float]] = {}
        self.continuations: dict[str, list[int]] = {}


def score(llm, x: Inputs, generate_tokens: int) -> Scores:
    out = Scores()
    out.passkey = answers(llm, x)
    got = prompt_logprobs(llm, [d for _, d in x.docs])
    out.docs = {doc_id: g for (doc_id, _), g in zip(x.docs, got)}
    if generate_tokens:
        conts = greedy(llm, [d[:len(d) - x.scored] for _, d in x.docs], generate_tokens)
        out.continuations = {doc_id: c for (doc_id, _), c in zip(x.docs, conts)}
    return out


def samples_of(x: Inputs, tok, sc: Scores, base: Scores | None, gen_nll: dict[str, float]) -> Samples:
    """Per-sample values of one method (``base`` None: the baseline itself)."""
    s = Samples()
    for sid, _, ans in x.passkey:
        got, top = sc.passkey[sid]
        s.passkey[sid] = got[:len(ans)] == ans
        upto = next((i + 1 for i, (g, a) in enumerate(zip(got, ans)) if g != a), len(got))
        s.passkey_answer[sid] = tok.decode(got[:upto])
        ref = base.passkey[sid][1] if base else top
        shared = [t for t in top if t in ref]  # the tokens both engines rank in their top-k
        _proof(s, sid, [top[t] for t in shared] or [0.0], [ref[t] for t in shared] or [0.0])
        if set(top) != set(ref):  # different top-k tokens: not identical, whatever the shared values
            s.identical[sid] = False
    for doc_id, ids in x.docs:
        tail = sc.docs[doc_id][len(ids) - x.scored:]  # logprobs of the last ``scored - 1`` tokens
        s.longdoc[doc_id] = (-sum(tail), len(tail))
        _proof(s, doc_id, tail, base.docs[doc_id][len(ids) - x.scored:] if base else None)
        if doc_id in sc.continuations:
            cont, ref = sc.continuations[doc_id], (base or sc).continuations[doc_id]
            s.generation[doc_id] = (gen_nll[doc_id], len(cont))
            s.agreement[doc_id] = sum(a == b for a, b in zip(cont, ref)) / len(cont)
    return s


def generation_nll(llm, x: Inputs, continuations: dict[str, list[int]]) -> dict[str, float]:
    """The baseline engine's negative log-likelihood of each continuation after its chapter prefix."""
    docs = dict(x.docs)
    keys = list(continuations)
    prompts = [docs[k][:len(docs[k]) - x.scored] + continuations[k] for k in keys]
    got = prompt_logprobs(llm, prompts)
    return {k: -sum(g[len(p) - 1 - len(continuations[k]):])
            for k, g, p in zip(keys, got, prompts)}


def _slope(points: dict[int, Summary]) -> float | None:
    if len(points) < 2:
        return None
    xs, ys = list(points), [points[c].median for c in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / var * 1000 if var else None


def cost(llm, info, filler: list[int], contexts: list[int], cfg: ServedSettings) -> ServedCost:
    """Capacity and bytes per token of the engine's cache; decode time per token by context length."""
    from vllm import SamplingParams

    blocks, bsize, _ = kv_capacity(llm)
    tokens = blocks * bsize if blocks and bsize else None
    cache_bytes = info.memory.kv_cache_bytes_vllm if info.memory else None
    found: dict[str, int] = {}
    for part in llm.apply_model(kernels.vllm_attention_backends):
        for k, v in part.items():
            found[k] = found.get(k, 0) + v
    backend = max(found, key=found.get) if found else None

    def tpot_ms(prompt: list[int], n: int) -> float:
        """One request's decode time per output token, from vLLM's own request timestamps (first to last
        token, engine core clock), as vLLM's time-per-output-token metric computes it."""
        o = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=n, temperature=0.0,
                                                                        ignore_eos=True), use_tqdm=False)[0]
        st = getattr(o, "metrics", None)
        if st is not None and getattr(st, "last_token_ts", 0) > getattr(st, "first_token_ts", 0) > 0:
            return (st.last_token_ts - st.first_token_ts) / (len(o.outputs[0].token_ids) - 1) * 1000
        raise RuntimeError(f"vLLM returned no request timestamps (metrics={st!r}): the served engines need "
                           "disable_log_stats=False")

    decode: dict[int, Summary] = {}
    n = cfg.decode_tokens
    for c in contexts:
        prompt = filler[:c - n]
        tpot_ms(prompt, 2)  # warm-up at this length
        decode[c] = Summary.of([tpot_ms(prompt, n) for _ in range(cfg.repeats)], "ms/token")
    through, longest = None, max(contexts) if contexts else 0
    if cfg.concurrency and longest:
        prompts = [filler[i * 7:i * 7 + longest - n] for i in range(cfg.concurrency)]  # distinct prompts
        rates = []
        for _ in range(max(1, cfg.repeats - 1)):
            t0 = time.perf_counter()
            greedy(llm, prompts, n)
            rates.append(cfg.concurrency * n / (time.perf_counter() - t0))
        through = Summary.of(rates, "tok/s")
    return ServedCost(kv_cache_dtype=info.kv_cache_dtype, dtype=info.dtype, attention_backend=backend,
                      capacity_tokens=tokens, cache_bytes=cache_bytes, bytes_per_token=cache_bytes / tokens if cache_bytes and tokens else None,
                      concurrent_sequences_at=concurrent_sequences(blocks, bsize) if blocks and bsize else {},
                      decode_ms_per_token=decode, decode_slope_ms_per_1k=_slope(decode),
                      long_context_tokens_per_s=through, concurrency=cfg.concurrency, long_context=longest,
                      output_tokens=n)


class Served:
    """Every vLLM KV dtype of one run: ``samples``/``costs``/``times`` per method name, baseline (``auto``) first."""

    def __init__(self):
        self.samples: dict[str, Samples] = {}
        self.costs: dict[str, ServedCost] = {}
        self.times: dict[str, float] = {}


def engine_config(m: KVMethod, x: Inputs, cfg: ServedSettings, contexts: list[int],
                  limit: int | None = None) -> EngineConfig:
    """The engine for ``m``: long enough for every prompt (within the model's ``limit``), the cache as asked."""
    longest = max(x.longest, *contexts) if contexts else x.longest
    return EngineConfig(max_model_len=min(longest + 64, limit or longest + 64), kv_cache_dtype=m.vllm_dtype or "auto",
                        cpu_kvcache_space_gib=cfg.cpu_kvcache_space_gib,
                        extra={"max_num_batched_tokens": cfg.chunk, "enable_prefix_caching": False,
                               "disable_log_stats": False})  # request timestamps: decode time per token


def measure_served(checkpoints: dict[str, Path], ms: list[KVMethod], tok, x: Inputs, generate_tokens: int,
                   cfg: ServedSettings, filler: list[int], contexts: list[int],
                   say: Callable[[str], None]) -> Served:
    """Each method in its own engine on ``checkpoints[name]`` (``ms[0]``, the baseline, last: its engine
    scores every method's continuation)."""
    if not ms or not ms[0].baseline:
        raise ValueError("the baseline KV cache (auto) must come first")
    scores: dict[str, Scores] = {}
    got = Served()
    order = ms[1:] + ms[:1]
    for i, m in enumerate(order):
        say(f"vLLM {i + 1}/{len(order)}: kv_cache_dtype={m.vllm_dtype} ({m.name}): load")
        t0 = time.perf_counter()
        limit = checkpoint.read(checkpoints[m.name]).max_position
        llm, info = engine.load(checkpoints[m.name], engine_config(m, x, cfg, contexts, limit))
        try:
            say(f"vLLM {m.name}: {len(x.passkey)} passkey prompts, {len(x.docs)} chapters")
            scores[m.name] = score(llm, x, generate_tokens)
            got.times[m.name] = time.perf_counter() - t0
            say(f"vLLM {m.name}: decode time at {', '.join(map(str, contexts))} tokens")
            got.costs[m.name] = cost(llm, info, filler, contexts, cfg)
            if m.baseline:
                nll = {name: generation_nll(llm, x, sc.continuations) for name, sc in scores.items()}
        finally:
            engine.shutdown(llm)
    base = scores[ms[0].name]
    for m in ms:
        got.samples[m.name] = samples_of(x, tok, scores[m.name], None if m.baseline else base, nll[m.name])
    return got
