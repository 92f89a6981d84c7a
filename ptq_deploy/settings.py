"""Every ``PTQ_DEPLOY_*`` environment variable, read in one place.

``settings()`` reads the environment when called (a test, or the CLI for a subprocess it starts, may set a
variable after import). Stdlib only: the environment bootstrap reads it from a bare interpreter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

OFF = ("off", "0", "false", "no")


@dataclass(frozen=True)
class Settings:
    home: Path
    """``PTQ_DEPLOY_HOME``: the environments, the probe, kept checkpoints, converted models and vLLM logs
    (default ``~/.cache/ptq-deploy``)."""
    accel: str | None
    """``PTQ_DEPLOY_ACCEL``: ``cpu`` or ``cuda``, which environments to manage (default: ``cuda`` where an NVIDIA
    driver is present)."""
    runtime_python: str | None
    """``PTQ_DEPLOY_RUNTIME_PYTHON``: your own vLLM interpreter instead of the managed one."""
    compress_python: str | None
    """``PTQ_DEPLOY_COMPRESS_PYTHON``: your own llmcompressor interpreter instead of the managed one."""
    probe_dir: Path
    """``PTQ_DEPLOY_PROBE_DIR``: where the probe's answers are cached (default ``<home>/probe``)."""
    checkpoint_cache: Path | None
    """``PTQ_DEPLOY_CHECKPOINT_CACHE``: where compressed checkpoints are kept for reuse across experiments
    (default ``<home>/checkpoints``; ``off`` turns reuse off)."""
    engine_heap: str | None
    """``PTQ_DEPLOY_ENGINE_HEAP``: ``glibc`` leaves glibc's heap settings alone while an engine runs on CPU."""


def variable(field: str) -> str:
    return f"PTQ_DEPLOY_{field.upper()}"


VARIABLES = {variable(f.name): f.name for f in fields(Settings)}


def settings() -> Settings:
    env = {f: os.environ.get(v) or None for v, f in VARIABLES.items()}
    home = Path(env["home"] or Path.home() / ".cache" / "ptq-deploy")
    cache = env["checkpoint_cache"]
    return Settings(home=home, accel=env["accel"], runtime_python=env["runtime_python"],
                    compress_python=env["compress_python"], probe_dir=Path(env["probe_dir"] or home / "probe"),
                    checkpoint_cache=None if (cache or "").lower() in OFF else Path(cache or home / "checkpoints"),
                    engine_heap=env["engine_heap"])
