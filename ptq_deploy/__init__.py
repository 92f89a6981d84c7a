"""ptq-deploy: compress, measure and compare quantized LLM variants for vLLM.

This module is import-light on purpose (stdlib only): the environment bootstrap runs it with a
bare interpreter before any dependency is installed.
"""

__version__ = "0.1.0"
