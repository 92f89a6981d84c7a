import pytest
import yaml

from ptq_deploy.compress import schemes
from ptq_deploy.errors import UsageError

EXPECTED = schemes.names()
FAKE_QUANT = [n for n in EXPECTED if schemes.get(n).method in ("pot", "apot")]


def test_every_scheme_file_is_one_scheme_in_the_registry_order():
    files = sorted(schemes.SCHEMES_DIR.glob("*.yaml"))
    assert sorted(schemes.names()) == sorted(f.stem for f in files)  # one scheme per file, named as the file
    assert all(schemes.get(f.stem).source == str(f) for f in files)
    order = [schemes.get(n) for n in schemes.names()]
    assert order[0].name == "BF16"  # the baseline first
    bits = [s.weight_bits for s in order]
    assert bits == sorted(bits, reverse=True)  # then from wide to narrow weights
    for wider, narrower in zip(order, order[1:]):
        if wider.weight_bits == narrower.weight_bits:  # within a width: W8A8 before weight-only, quality-only last
            assert (wider.activations == "bf16", wider.quality_only) <= (narrower.activations == "bf16",
                                                                         narrower.quality_only)


@pytest.mark.parametrize("name", EXPECTED)
def test_scheme_files_are_real_recipes(name):
    s = schemes.get(name)
    assert s.description and s.hardware_notes
    if name == "BF16":
        assert s.recipe is None and not s.calibration
        return
    if name in FAKE_QUANT:  # no library ships these: ptq_deploy.compress.fakequant, quality only, run by vLLM as dense
        r = s.resolve(group_size=64)
        assert s.recipe is None and s.quality_only and s.kind == "dense" and r.recipe is None
        assert (r.fake_quant.method, r.fake_quant.bits, r.fake_quant.group_size) == (s.method, s.weight_bits, 64)
        assert r.fake_quant.ignore == ["lm_head"] and not r.needs_calibration
        return
    mods = dict(schemes.modifiers(s.recipe))
    quant = [m for m in mods if m in schemes.QUANT_MODIFIERS]
    assert len(quant) == 1
    args = mods[quant[0]]
    assert "lm_head" in args["ignore"]
    w = args["config_groups"]["group_0"]["weights"]
    assert w["num_bits"] == s.weight_bits
    assert (w["strategy"] in ("group", "tensor_group", "block")) == (s.group_size is not None)
    if w["strategy"] == "block":  # FP8-BLOCK: square blocks of the scheme's group size
        assert w["block_structure"] == [s.group_size, s.group_size]
    else:
        assert w.get("group_size") == s.group_size
    # calibration-free schemes use only data-free modifiers and dynamic (or no) activation scales
    a = args["config_groups"]["group_0"].get("input_activations") or {}
    static_acts = bool(a) and a.get("dynamic") is not True
    assert s.calibration == (static_acts or any(m in mods for m in ("GPTQModifier", "AWQModifier",
                                                                     "SmoothQuantModifier", "AutoRoundModifier")))


def test_lookup_is_case_insensitive_and_unknown_is_clear():
    assert schemes.get("int8-w8a8").name == "INT8-W8A8"
    with pytest.raises(UsageError, match="unknown scheme 'W3A5'.*FP8-W8A8"):
        schemes.get("W3A5")


def test_group_size_override_and_validation():
    r = schemes.get("INT4-W4A16").resolve(group_size=64)
    assert r.group_size == 64
    assert "group_size: 64" in r.to_yaml()
    assert schemes.get("INT4-W4A16").recipe["quant_stage"]["quant_modifiers"]["GPTQModifier"][
        "config_groups"]["group_0"]["weights"]["group_size"] == 128  # registry copy untouched
    with pytest.raises(UsageError, match="power of two"):
        schemes.get("INT4-W4A16").resolve(group_size=96)
    with pytest.raises(UsageError, match="not group-quantized"):
        schemes.get("FP8-W8A8").resolve(group_size=64)


def test_kv_cache_fp8_is_added_to_the_quantization_modifier_and_forces_calibration():
    r = schemes.get("FP8-W8A8").resolve(kv_cache="fp8")
    assert r.needs_calibration
    kv = r.recipe["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["kv_cache_scheme"]
    assert kv == {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
    assert "kv_cache_scheme" in schemes.get("INT8-W8A8").resolve(kv_cache="fp8").recipe["quant_stage"][
        "quant_modifiers"]["GPTQModifier"]
    bf16 = schemes.get("BF16").resolve(kv_cache="fp8")
    assert bf16.recipe["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["kv_cache_scheme"]["num_bits"] == 8
    with pytest.raises(UsageError, match="--kv-cache"):
        schemes.get("BF16").resolve(kv_cache="int4")


def test_group_check_names_layer_size_and_fitting_groups():
    layers = {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1536, "lm_head": 576}
    schemes.check_group_size(layers, ["lm_head"], 64)  # fits
    with pytest.raises(UsageError) as e:
        schemes.check_group_size(layers, ["lm_head"], 128)
    msg = str(e.value)
    assert "576" in msg and "model.layers.0.self_attn.q_proj" in msg and "64, 32, 16" in msg
    # ignored layers don't count; regex ignores work
    schemes.check_group_size({"a.q_proj": 512, "lm_head": 100}, ["re:.*lm_head"], 128)


def test_user_recipe_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"stage": {"mods": {"QuantizationModifier": {
        "ignore": ["lm_head"], "config_groups": {"g": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}}}}}}}))
    s = schemes.from_recipe_file(f)
    assert (s.name, s.weights, s.activations, s.group_size, s.calibration) == ("custom:mine", "int4", "bf16", 32, False)
    with pytest.raises(UsageError, match="not found"):
        schemes.from_recipe_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("scheme, method", [("NVFP4A16", "NVFP4"), ("MXFP4A16", "MXFP4"), ("NVFP4", None),
                                            ("INT4-W4A16-AUTOROUND", "AutoRound"),
                                            ("INT4-W4A16-SPINQUANT", "SpinQuant+GPTQ"), ("INT4-W4A16", "GPTQ"),
                                            ("INT4-W4A16-RTN", "RTN")])
def test_each_weight_only_method_is_its_own_line_on_the_bit_width_curve(scheme, method):
    """The curve draws a line per ``weight_method``: a float format by its name, AutoRound and the rotations by
    theirs (not "RTN", which a recipe without GPTQ / AWQ would otherwise read as); activation-quantized: none."""
    from ptq_deploy.checkpoint.metadata import CheckpointMetadata
    from ptq_deploy.models import ModelSource

    s = schemes.get(scheme)
    meta = CheckpointMetadata(scheme=scheme, source=ModelSource(spec="x", kind="local", path="/x"),
                              recipe=s.resolve(group_size=64 if s.group_adjustable else None).recipe)
    assert meta.weight_method == method
