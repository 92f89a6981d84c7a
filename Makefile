# ptq-deploy: two commands for a newcomer (see README).
PYTHON ?= python3
RUNTIME_PY = $(shell $(PYTHON) -m ptq_deploy.environments python runtime)
# pytest-xdist workers, one per core (at most 4); one more per core measured slower (perf_results/README.md)
TEST_WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)
LANES ?= $(shell [ $$(nproc) -ge 2 ] && echo 2 || echo 1)  # cells compressed/scored at once (perf runs alone)

.PHONY: setup demo test
setup:  ## create/update the two pinned environments, then measure what their vLLM runs here (both idempotent)
	$(PYTHON) -m ptq_deploy.environments setup
	$(RUNTIME_PY) -m ptq_deploy.probe.run

demo: setup  ## the main job: every scheme of the embedded SmolLM2-135M, compressed, measured, ranked
	$(RUNTIME_PY) -m ptq_deploy.cli run smollm2-135m --lanes $(LANES); rc=$$?; \
	$(RUNTIME_PY) -m ptq_deploy.cli report results/smollm2-135m && exit $$rc

test: setup  ## the test suite (real vLLM, real llmcompressor) in pytest-xdist workers, a file each, longest first
	$(RUNTIME_PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)
