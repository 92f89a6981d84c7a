"""Shared fixtures: a tiny random Llama built in-session, compressed checkpoints, shared vLLM engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from ptq_deploy.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


_COMPRESSED: dict[str, Path] = {}
COMPRESS_RESULTS: dict[str, object] = {}  # checkpoint path -> its CompressResult


@pytest.fixture(scope="session")
def compressed(tiny_model, ckpt_dir):
    """``compressed(scheme, **opts)`` -> checkpoint path, made once per session via the real product path."""
    from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress

    def make(scheme: str, **opts) -> Path:
        key = scheme + repr(sorted(opts.items()))
        if key not in _COMPRESSED:
            out = ckpt_dir / f"{scheme}-{len(_COMPRESSED)}"
            COMPRESS_RESULTS[str(out)] = compress(CompressConfig(
                model=str(tiny_model), scheme=scheme, output=out,
                calibration=CalibrationSettings(num_samples=8, max_seq_len=64), **opts))
            _COMPRESSED[key] = out
        return _COMPRESSED[key]

    return make


class _Engines:
    """One vLLM engine at a time, shared across tests; switching checkpoints shuts the old one down."""

    def __init__(self):
        self.path, self.llm, self.info = None, None, None

    def get(self, path: Path):
        from ptq_deploy import engine

        if self.path != str(path):
            self.close()
            self.llm, self.info = engine.load(path, engine.EngineConfig(max_model_len=512))
            self.path = str(path)
        return self.llm, self.info

    def close(self):
        if self.llm is not None:
            from ptq_deploy import engine

            engine.shutdown(self.llm)
            self.llm, self.path = None, None


@pytest.fixture(scope="session")
def engines():
    e = _Engines()
    yield e
    e.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the CLI of this checkout (``python -m ptq_deploy.cli`` from the repo root) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ptq_deploy.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.fixture
def cli():
    return run_cli


def no_temp_siblings(out: Path) -> bool:
    return not list(out.parent.glob(f".ptq-tmp-{out.name}-*"))


__all__ = ["run_cli", "no_temp_siblings", "shutil"]


_EMBEDDED: dict[str, Path] = {}
# INT4 schemes need group 64 on SmolLM2-135M (hidden size 576 is not a multiple of 128)
EMBEDDED_GROUP = 64


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    from ptq_deploy.models import resolve

    return Path(resolve("default").path)


@pytest.fixture(scope="session")
def embedded_compressed(embedded_model, ckpt_dir):
    """``embedded_compressed(scheme)`` -> SmolLM2-135M checkpoint, compressed once per session
    (small calibration: 16 samples x 128 tokens, to keep CI fast)."""
    from ptq_deploy import schemes
    from ptq_deploy.compress import CalibrationSettings, CompressConfig, compress

    def make(scheme: str, **opts) -> Path:
        key = scheme + repr(sorted(opts.items()))
        if key not in _EMBEDDED:
            out = ckpt_dir / f"smollm2-{scheme}-{len(_EMBEDDED)}"
            if schemes.get(scheme).group_size:
                opts.setdefault("group_size", EMBEDDED_GROUP)
            compress(CompressConfig(model="default", scheme=scheme, output=out,
                                    calibration=CalibrationSettings(num_samples=16, max_seq_len=128), **opts))
            _EMBEDDED[key] = out
        return _EMBEDDED[key]

    return make
