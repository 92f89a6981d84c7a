"""The KV-cache track: codecs hold fewer bytes and read back what they stored, a no-op method is flagged,
single-pass perplexity cannot see a quantized cache (chunked scoring does), the registry, the suite plan,
the CLI's one-line refusals and the report's KV section. Mechanics on the tiny random Llama; one short
check on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache

from ptq_deploy.errors import UsageError
from ptq_deploy.kvcache import cache as kc
from ptq_deploy.kvcache import codecs, longctx, methods, served
from ptq_deploy.kvcache.config import KVSettings, ServedSettings
from ptq_deploy.kvcache.methods import KVMethod
from ptq_deploy.kvcache.result import KVResult
from ptq_deploy.kvcache.runner import measure_all, measure_in_vllm
from ptq_deploy.results import Identity
from ptq_deploy.suite import experiment
from ptq_deploy.suite.layout import StepRecord
from ptq_deploy.suite.plan import RunOptions, compress_kv, plan

NOOP = KVMethod(name="noop", family="passthrough", description="stores K/V unchanged", window=16)
SMALL = {"kivi-int2": methods.get("kivi-int2").model_copy(update={"window": 16}),
         "kivi-int4": methods.get("kivi-int4").model_copy(update={"window": 16})}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def tiny_doc(tiny):
    _, tok = tiny
    text = longctx.chapters()[0].text
    ids = tok(text, add_special_tokens=False)["input_ids"][:600]
    return longctx.Document(id="ch", book="b", chapter=1, text=tok.decode(ids), sha256="-", source="test")


@pytest.fixture(scope="module")
def tiny_measured(tiny, tiny_doc):
    model, tok = tiny
    settings = KVSettings(scored_tokens=128, chunk=32, generate_tokens=8, bootstrap_iters=200)
    items = longctx.passkey_samples(tok, longctx.PasskeySpec(lengths=[300], depths=[0.25, 0.75]))
    ms = [methods.get("none"), NOOP, SMALL["kivi-int2"], SMALL["kivi-int4"]]
    return measure_all(model, tok, ms, settings, [tiny_doc], items, lambda _m: None), items


def _kv(layers: int, tokens: int, seed: int = 0) -> Cache:
    g = torch.Generator().manual_seed(seed)
    fp = kc.convert(Cache(layers=[]), methods.get("none"))
    for _ in range(layers):
        k = torch.randn(1, 2, tokens, 64, generator=g)
        k[..., 3] += 8  # a key channel with an offset, as real keys have
        layer = kc.DynamicLayer()
        layer.update(k, torch.randn(1, 2, tokens, 64, generator=g))
        fp.layers.append(layer)
    return fp


def test_registry_answers_available_on_a_miss():
    with pytest.raises(UsageError, match="Available: none, fp8, fp8-uncalibrated, kivi-int2"):
        methods.get("kivi-int3")
    assert methods.get("kivi-int2").quality_only and not methods.get("fp8").quality_only
    assert "kvpress" in methods.NOT_INCLUDED


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_roundtrip(bits):
    q = torch.randint(0, 1 << bits, (1000,), dtype=torch.uint8)
    packed = codecs.pack(q, bits)
    assert packed.numel() == 125 * bits  # 8 codes in `bits` bytes
    assert torch.equal(codecs.unpack(packed, bits, 1000).to(torch.uint8), q)


@pytest.mark.parametrize("name", ["kivi-int2", "kivi-int4", "kvquant-int3", "kvquant-int2", "hf-quanto-int4"])
def test_codec_holds_fewer_bytes_and_reads_back_close(name):
    fp = _kv(2, 512)
    cache = kc.convert(fp, methods.get(name))
    base = kc.cache_bytes(kc.convert(fp, methods.get("none")))
    assert kc.cache_bytes(cache) < 0.75 * base
    new_k, new_v = torch.randn(1, 2, 1, 64), torch.randn(1, 2, 1, 64)
    keys, _ = cache.layers[0].update(new_k, new_v)
    assert keys.shape == (1, 2, 513, 64)
    ref = torch.cat([fp.layers[0].keys, new_k], dim=-2)
    err = float((keys - ref).abs().mean() / ref.abs().mean())
    assert 0 < err < 0.35, err  # lossy, but it read back what it stored
    assert torch.equal(keys[..., -1:, :], new_k)  # the newest token is at full precision
    ERRORS[name] = err


ERRORS: dict[str, float] = {}


def test_uniform_codec_error_follows_its_step_size():
    """A b-bit uniform codec's error scales with its step, range / (2^b - 1): with the same data, every KIVI and
    KVQuant width has the same error x (2^b - 1) (a codec that ignored its bits, or scaled wrong, would not)."""
    uniform = [n for n in ERRORS if methods.get(n).family in ("kivi", "kvquant")]
    if len(uniform) < 3:
        pytest.skip("runs after test_codec_holds_fewer_bytes_and_reads_back_close")
    scaled = {n: ERRORS[n] * (2 ** methods.get(n).bits - 1) for n in uniform}
    ref = scaled["kivi-int2"]
    assert all(abs(v / ref - 1) < 0.25 for v in scaled.values()), scaled


def test_low_rank_pays_only_on_low_rank_data():
    """FORGE-style SVD keeps 95% of the energy: a cache of rank-4 K/V shrinks, random (full-rank) K/V do not
    (such a cache is no smaller, which the runner reports as an error finding)."""
    g = torch.Generator().manual_seed(0)
    low = kc.DynamicLayer()
    low.update(torch.randn(1, 2, 512, 4, generator=g) @ torch.randn(4, 64, generator=g),
               torch.randn(1, 2, 512, 4, generator=g) @ torch.randn(4, 64, generator=g))
    forge = methods.get("forge-95")
    for layers, smaller in (([low], True), (_kv(1, 512).layers, False)):
        fp = Cache(layers=layers)
        ratio = kc.cache_bytes(kc.convert(fp, forge)) / kc.cache_bytes(kc.convert(fp, methods.get("none")))
        assert (ratio < 0.5) if smaller else (ratio >= 1.0), ratio


def test_fewer_bits_lose_more():
    fp = _kv(1, 512)
    errs = {}
    for name in ("kivi-int2", "kivi-int4", "kvquant-int3"):
        keys, _ = kc.convert(fp, methods.get(name)).layers[0].update(torch.zeros(1, 2, 1, 64), torch.zeros(1, 2, 1, 64))
        errs[name] = float((keys[..., :-1, :] - fp.layers[0].keys).abs().mean())
    assert errs["kivi-int4"] < errs["kvquant-int3"] < errs["kivi-int2"], errs


def test_bytes_count_what_is_held_not_what_is_claimed():
    big = torch.zeros(1, 2, 1024, 64)
    view = big[..., -16:, :]  # a method that slices but keeps the full-precision tensor alive
    assert codecs.storage_bytes([view]) == big.numel() * 4
    assert codecs.storage_bytes([view.clone()]) == 16 * 2 * 64 * 4


def test_noop_method_is_flagged_not_a_row(tiny_measured):
    got, _ = tiny_measured
    rows = {r.method: r for r in got.rows}
    assert "noop" not in rows and [r.method for r in got.rejected] == ["noop"]
    errors = [f.message for f in got.findings if f.severity == "error" and f.method == "noop"]
    assert any("bit-identical" in e for e in errors) and any("no smaller" in e for e in errors)
    noop = got.rejected[0]
    assert noop.identical_samples == len(noop.samples.identical) == 3 and noop.bytes_ratio >= 1.0
    kivi = rows["kivi-int2"]  # applied: smaller, different logits on every sample
    assert kivi.identical_samples == 0 and kivi.logit_max_abs_diff.min > 0 and kivi.bytes_ratio < 0.6
    assert rows["kivi-int4"].bytes_ratio > kivi.bytes_ratio
    assert rows["kivi-int4"].logit_max_abs_diff.mean < kivi.logit_max_abs_diff.mean


def test_single_pass_perplexity_cannot_see_the_quantized_cache(tiny, tiny_doc, tiny_measured):
    """One forward over the whole text attends to its own full-precision K/V, whatever the cache stores:
    the logits equal the baseline's bit for bit. Chunked scoring reads the cache and sees the loss."""
    model, tok = tiny
    ids = tok(tiny_doc.text, return_tensors="pt").input_ids
    with torch.inference_mode():
        base = model(ids).logits
        quant_cache = Cache(layers=[kc.BlockLayer(kc.codec_for(SMALL["kivi-int2"]), 16) for _ in model.model.layers])
        single = model(ids, past_key_values=quant_cache, use_cache=True).logits
    assert torch.equal(single, base)
    assert kc.cache_bytes(quant_cache) < 0.5 * ids.shape[1] * 4 * 2 * 64 * 4  # and yet the cache was quantized
    got, _ = tiny_measured
    kivi = next(r for r in got.rows if r.method == "kivi-int2")
    assert abs(kivi.longdoc_delta.delta) > 1e-3 * kivi.longdoc_delta.baseline
    assert kivi.logit_mean_abs_diff.mean > 1e-4


def test_experiment_kv_cells_and_kv_step(tmp_path, runs_here):
    exp = experiment.Experiment.model_validate({
        "name": "t", "models": [{"name": "m", "source": "default"}], "schemes": ["BF16", "INT8-W8A8"],
        "kv_cache": ["fp8-uncalibrated", "kivi-int2", "kivi-int4"], "kv": {"documents": 1}})
    assert exp.kv_cache[0] == "none" and exp.kv_quality_only == ["kivi-int2", "kivi-int4"]
    assert exp.kv_step_methods == ["kivi-int2", "kivi-int4", "fp8-uncalibrated"]  # + the engine rows, no scales needed
    steps = plan(exp, RunOptions(results_dir=tmp_path))
    kv = [s for s in steps if s.step == "kv"]
    assert [(s.cell, s.state) for s in kv] == [("BF16", "pending")]
    fp8 = [s for s in steps if s.cell == "INT8-W8A8+kv-fp8-uncalibrated"]
    assert compress_kv("fp8-uncalibrated") == "none" and compress_kv("fp8") == "fp8"
    perf, here = {s.step: s for s in fp8}["perf"], runs_here(kv_cache_dtype="fp8")
    if here.runnable:  # GPUs, AVX-512/AMX CPUs (measured by the probe): a cell like any other
        assert perf.state == "pending"
    else:  # an AVX2 CPU: "FP8 KV cache on CPU requires x86 with AVX-512 or AMX", from vLLM
        assert perf.state == "not_runnable" and perf.reason == f"not runnable here: {here.reason}"
    engine = experiment.Experiment.model_validate({
        "name": "t", "models": [{"name": "m", "source": "default"}], "schemes": ["BF16"],
        "kv_cache": ["kivi-int2"], "kv": {"engine": ["fp8_e5m2"]}})
    assert engine.kv_step_methods == ["kivi-int2", "fp8_e5m2"] and engine.kv_vllm == ["none"]  # no fp8_e5m2 cell
    with pytest.raises(UsageError, match="kv.engine: kivi-int2 is not a vLLM KV dtype"):
        experiment.Experiment.model_validate({"name": "t", "models": [{"name": "m", "source": "default"}],
                                              "schemes": ["BF16"], "kv": {"engine": ["kivi-int2"]}})
    with pytest.raises(UsageError, match="kv_cache: unknown KV-cache method 'kivi3'.*Available:"):
        experiment.Experiment.model_validate({"name": "t", "models": [{"name": "m", "source": "default"}],
                                              "schemes": ["BF16"], "kv_cache": ["kivi3"]})


def test_cli_lists_methods_and_refuses_in_one_line(cli, runs_here, fake_probe):
    p = cli("kv", "--list")
    assert p.returncode == 0 and "kivi-int2" in p.stdout and "fp8-uncalibrated" in p.stdout
    here = runs_here(kv_cache_dtype="fp8")
    p = cli("kv", "default", "-m", "fp8")  # calibrated scales: the plain checkpoint has none
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    if here.runnable:
        assert p.returncode == 2 and "has none" in p.stderr and "--scales-from" in p.stderr
        fake_probe(**{"kv-fp8": False})  # the refusal as it reads where the probe measured no fp8 cache
        p = cli("kv", "default", "-m", "fp8")
        assert p.returncode == 3 and "KV cache fp8: not runnable here" in p.stderr and "faked" in p.stderr
    else:
        assert p.returncode == 3 and "KV cache fp8: not runnable here" in p.stderr and here.reason in p.stderr
    p = cli("kv", "default", "-m", "kivi-int8")
    assert p.returncode == 2 and "Available:" in p.stderr and "fp8_e5m2" in p.stderr and "Traceback" not in p.stderr
    p = cli("eval", "default", "--kv-cache", "kivi-int2")
    assert p.returncode == 2 and "vLLM cannot serve this" in p.stderr and "ptq-deploy kv default -m kivi-int2" in p.stderr


SERVED = KVSettings(scored_tokens=128, generate_tokens=8, bootstrap_iters=200,
                    served=ServedSettings(chunk=64, decode_tokens=4, repeats=2, concurrency=2))


def _served(engine_model, tiny, tiny_doc):
    _, tok = tiny
    items = longctx.passkey_samples(tok, longctx.PasskeySpec(lengths=[300], depths=[0.25, 0.75]))
    ms = [methods.VLLM_BASELINE, methods.get("fp8-uncalibrated")]
    return measure_in_vllm({m.name: engine_model for m in ms}, tok, ms, SERVED, [tiny_doc], items, lambda _m: None)


def test_vllm_fp8_cache_is_read_and_costs_half(engine_model, tiny, tiny_doc, runs_here):
    """vLLM's fp8 cache in the engine: every score differs from the auto cache's on the same tokens (the
    scored tail reads the chapter through the cache), and the engine holds twice the tokens in the same space."""
    if not runs_here(kv_cache_dtype="fp8").runnable:
        pytest.skip("vLLM runs no fp8 KV cache on this machine (the probe measured it)")
    got = _served(engine_model, tiny, tiny_doc)
    assert not got.rejected, got.findings
    base, fp8 = got.rows
    assert (base.method, base.backend, fp8.method, fp8.backend) == ("auto", "vllm", "fp8-uncalibrated", "vllm")
    assert fp8.identical_samples == 0 and fp8.logit_max_abs_diff.min > 0 and base.logit_max_abs_diff.max == 0
    assert fp8.cost.kv_cache_dtype == "fp8" and base.cost.kv_cache_dtype == "auto"
    assert fp8.cost.capacity_tokens == pytest.approx(2 * base.cost.capacity_tokens, rel=0.05)
    assert fp8.bytes_ratio == pytest.approx(0.5, rel=0.05)
    assert fp8.cost.attention_backend and set(fp8.cost.decode_ms_per_token) == {300}
    assert all(s.min > 0 and s.n == 2 for s in fp8.cost.decode_ms_per_token.values())
    assert fp8.longdoc_delta.n == 1 and fp8.longdoc_delta.delta != 0 and len(fp8.passkey) == 2


def test_a_scoring_path_that_bypasses_the_cache_fails_the_proof(engine_model, tiny, tiny_doc, runs_here,
                                                                 monkeypatch):
    """The fp8 row scored by an engine whose cache is not fp8 (what a path that never reads the quantized
    cache looks like): its logprobs equal the auto engine's bit for bit and its cache is no smaller: rejected."""
    if not runs_here(kv_cache_dtype="fp8").runnable:
        pytest.skip("vLLM runs no fp8 KV cache on this machine (the probe measured it)")
    real = served.engine_config
    monkeypatch.setattr(served, "engine_config", lambda m, *a: real(methods.VLLM_BASELINE, *a))
    got = _served(engine_model, tiny, tiny_doc)
    assert [r.method for r in got.rows] == ["auto"] and [r.method for r in got.rejected] == ["fp8-uncalibrated"]
    errors = [f.message for f in got.findings if f.severity == "error"]
    assert any("bit-identical" in e for e in errors) and any("no smaller" in e for e in errors)


def test_passkey_is_an_lm_eval_task():
    """The bundled passkey items load as lm-eval's generate_until task; the prompt ends with the question
    and the target is the key hidden in the context."""
    from ptq_deploy.eval.config import EvalConfig
    from ptq_deploy.eval.runner import load_tasks, task_manager

    cfg = EvalConfig(checkpoint="default", tasks=["passkey"])
    task = load_tasks(task_manager(cfg), cfg.tasks)[0]
    docs = list(task.test_docs())
    assert len(docs) == 15 and {d["length"] for d in docs} == {1024, 2048, 4096}
    for d in docs[:3]:
        prompt, target = task.doc_to_text(d), task.doc_to_target(d)
        assert prompt.endswith("The pass key is") and f"The pass key is {target}." in prompt
    assert task.config.output_type == "generate_until"


def test_report_kv_section(tiny_measured, tmp_path):
    from ptq_deploy.report import build_report, write_report

    got, _ = tiny_measured
    res = KVResult(identity=Identity(model="m", scheme="BF16"), started_at="2026-11-23T00:00:00+00:00",
                   settings=KVSettings(), compute_dtype="float32", methods=got.rows, rejected=got.rejected,
                   findings=got.findings)
    root = tmp_path / "results"
    res.write(root / "results" / "m" / "BF16" / "kv.json")
    StepRecord(identity=Identity(model="m", scheme="BF16"), started_at=res.started_at, cell="BF16", step="kv",
               key="k", status="ok", result="results/m/BF16/kv.json").write(root / "steps" / "m" / "BF16" / "kv.json")
    rep = build_report(root)
    sec = rep.kv[0]
    assert [r.method for r in sec.rows] == ["none", "kivi-int2", "kivi-int4"]
    kivi = next(r for r in sec.rows if r.method == "kivi-int2")
    assert kivi.bytes_ratio == pytest.approx(next(r for r in got.rows if r.method == "kivi-int2").bytes_ratio, rel=1e-3)
    assert any("noop" in f and "bit-identical" in f for f in sec.findings)
    written = write_report(rep, tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## KV cache: m, BF16 (baseline: the unquantized cache of the same backend)" in md and "### KV-cache methods" in md and "| kivi-int2 * | HF |" in md and "| noop" not in md
    assert (tmp_path / "out" / "plots" / "kv_passkey_m_BF16.png") in written
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kv"][0]["rows"][1]["method"] == "kivi-int2"


def test_embedded_model_passkey_read_from_the_cache(embedded_model):
    """The embedded model finds a key at 512 tokens with the unquantized cache; the 2-bit cache is smaller
    and changes what the question reads (a short check: one sample)."""
    tok = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32).eval()
    items = longctx.passkey_samples(tok, longctx.PasskeySpec(lengths=[512], depths=[0.5]))
    got = measure_all(model, tok, [methods.get("none"), methods.get("kivi-int2")], KVSettings(bootstrap_iters=0),
                      [], items, lambda _m: None)
    base, kivi = got.rows
    assert base.samples.passkey[items[0].id], base.samples.passkey_answer
    assert kivi.bytes_ratio < 0.5 and kivi.logit_max_abs_diff.mean > 0.1


def test_run_kv_on_a_checkpoint_dir(tiny_model):
    """The entry point the suite's kv step and `ptq-deploy kv` call, end to end on a checkpoint directory."""
    from ptq_deploy.kvcache.config import KVConfig
    from ptq_deploy.kvcache.runner import run_kv

    res = run_kv(KVConfig(checkpoint=str(tiny_model), methods=["none", "kivi-int4", "kivi-int2"], documents=0,
                          passkey={"lengths": [400], "depths": [0.5]}, bootstrap_iters=100, write=False))
    assert res.identity.model == tiny_model.name and res.model_max_position == 1024
    rows = {m.method: m for m in res.methods}
    assert set(rows) == {"none", "kivi-int4", "kivi-int2"} and not res.rejected
    int4, int2 = rows["kivi-int4"], rows["kivi-int2"]
    # fewer bits: a smaller cache that moves the logits further from the unquantized cache's, on the same input
    assert int2.bytes_ratio < int4.bytes_ratio < 1 and rows["none"].bytes_ratio == 1
    assert int2.logit_mean_abs_diff.mean > int4.logit_mean_abs_diff.mean > 0
    assert rows["none"].logit_max_abs_diff.max == 0


def _row(method: str, backend: str, tokens: int, ppl_delta: tuple[float, float, float] | None, decode_ms: float):
    from ptq_deploy.kvcache.result import Delta, MethodResult, ServedCost
    from ptq_deploy.stats import Summary

    d = None
    if ppl_delta:
        v, lo, hi = ppl_delta
        d = Delta(baseline=20.0, value=20.0 + v, delta=v, stderr=None, ci95=(lo, hi), n=4, verdict="unknown")
    cost = ServedCost(kv_cache_dtype=method, dtype="bfloat16", attention_backend="B", capacity_tokens=tokens,
                      cache_bytes=2**30, bytes_per_token=2**30 / tokens,
                      decode_ms_per_token={4096: Summary.of([decode_ms] * 3, "ms/token")})
    return MethodResult(method=method, family="vllm", description="", params={}, quality_only=False, backend=backend,
                        longdoc_delta=d, cost=cost)


def test_kv_recommendation_follows_the_recovery_rule():
    """The vLLM dtype meeting the rule on every measure with the most KV tokens is recommended, with what it
    buys; a stricter rule that nothing meets recommends auto and says why (recorded rows, no engine)."""
    from ptq_deploy.report import kv as report_kv

    res = KVResult(identity=Identity(model="m", scheme="BF16"), started_at="2026-12-06T00:00:00+00:00",
                   settings=KVSettings(), compute_dtype="float32", methods=[
                       _row("auto", "vllm", 1000, None, 50.0),
                       _row("fp8", "vllm", 2000, (0.05, 0.01, 0.09), 45.0),  # recovery 99.75% (99.55-99.95)
                       _row("fp8_e5m2", "vllm", 2000, (0.6, 0.4, 0.8), 44.0)])  # recovery ~97%: fails
    judged = report_kv.judge(res, 99.0)
    assert {j.method: j.overall for j in judged} == {"fp8": "meets", "fp8_e5m2": "fails"}
    r, lo, hi = next(j for j in judged if j.method == "fp8").recovery_pct["long-doc ppl"]
    assert lo < r < hi and r == pytest.approx(100 * 20 / 20.05, abs=0.01)
    rec = report_kv.recommend(res, judged, 99.0)
    assert rec.startswith("fp8: meets") and "2× the KV tokens (2000 vs 1000)" in rec and "45 vs 50 ms/token" in rec
    strict = report_kv.judge(res, 99.9)
    assert {j.method: j.overall for j in strict} == {"fp8": "inconclusive", "fp8_e5m2": "fails"}
    assert report_kv.recommend(res, strict, 99.9).startswith("auto: no vLLM KV dtype meets recovery ≥ 99.9%")
