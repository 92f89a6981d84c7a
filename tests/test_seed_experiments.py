"""The seed models' experiment files (hub models, for a machine that reaches the hub): each loads and plans here,
offline (conftest: HF_HUB_OFFLINE), and the plan's group-size check reads the model's shipped config."""

import pytest

from ptq_deploy.compress import linear_input_sizes
from ptq_deploy.errors import UsageError
from ptq_deploy.models import resolve, shipped_config
from ptq_deploy.suite.experiment import load
from ptq_deploy.suite.plan import QUALITY_ONLY, RunOptions, plan

SEEDS = {"qwen2.5-7b": "Qwen/Qwen2.5-7B", "mistral-7b-v0.3": "mistralai/Mistral-7B-v0.3",
         "llama-3.1-8b": "meta-llama/Llama-3.1-8B", "opt-1.3b": "facebook/opt-1.3b"}


@pytest.mark.parametrize("name,hub", SEEDS.items())
def test_seed_experiment_plans_offline_from_its_shipped_config(name, hub, tmp_path):
    exp = load(name)
    m = exp.models[0]
    cfg = shipped_config(hub)
    assert m.source == hub and m.engine.dtype in ("bfloat16", "float16") and m.group_size
    assert m.engine.max_model_len <= cfg["max_position_embeddings"]
    sizes = linear_input_sizes(resolve(hub, check_hub=False))  # what the plan checks: the shipped config's layers
    assert cfg["hidden_size"] in sizes.values() and len(set(sizes.values())) == 2
    assert all(k % m.group_size == 0 for k in sizes.values())
    steps = plan(exp, RunOptions(results_dir=tmp_path, dry_run=True))
    assert {s.cell for s in steps} == set(exp.schemes) and steps[0].cell == exp.baseline
    by = {(s.cell, s.step): s for s in steps}
    assert by[("POT-W4A16", "perf")].state == "not_applicable" and by[("POT-W4A16", "perf")].reason == QUALITY_ONLY
    assert by[("APOT-W3A16", "eval")].state == "pending"  # scored like a dense model


def test_a_group_size_that_does_not_divide_is_refused_before_any_step(tmp_path):
    exp = load("qwen2.5-7b")
    bad = exp.model_copy(update={"models": [exp.models[0].model_copy(update={"group_size": 1024})]})
    with pytest.raises(UsageError, match=r"qwen2.5-7b \(Qwen/Qwen2.5-7B\), \S+: group_size 1024 does not divide "
                                         r"input size 3584 .*group sizes that fit this model: 256, 128"):
        plan(bad, RunOptions(results_dir=tmp_path, dry_run=True))
    unknown = exp.model_copy(update={"models": [exp.models[0].model_copy(update={"source": "nobody/unshipped"})]})
    assert plan(unknown, RunOptions(results_dir=tmp_path, dry_run=True))  # unreadable here: its compress step says so
