# ptq-deploy: two commands for a newcomer (see README).
PYTHON ?= python3
RUNTIME_PY = $(shell $(PYTHON) -m ptq_deploy.envs python runtime)

.PHONY: setup demo test
setup:  ## create/update the two pinned environments (idempotent, quick when nothing changed)
	$(PYTHON) -m ptq_deploy.envs setup

demo: setup  ## the main job on the embedded SmolLM2-135M model
	$(RUNTIME_PY) -m ptq_deploy.cli demo

test: setup  ## the test suite (real vLLM, real llmcompressor)
	$(RUNTIME_PY) -m pytest -q $(PYTEST_ARGS)
