"""ptq-deploy: compress, measure and compare quantized LLM variants for vLLM.

This module is import-light on purpose (stdlib only): the environment bootstrap runs it with a
bare interpreter before any dependency is installed.
"""

from pathlib import Path

__version__ = "0.1.0"
DATA_DIR = Path(__file__).resolve().parent / "data"  # the bundled schemes, experiments, texts, devices, configs
