# `make train` and `make test` create and fill .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo lmms-eval train train-mixture test test-fast coverage sweep bench-memory smollm2 clean-venv

# ranges in pyproject.toml, the exact tested versions in constraints.txt
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

# the tests also run MovieChat-1K inside lmms-eval, decode with torchcodec and drive the demo page: the optional
# extras, from the same constraints (torchcodec needs FFmpeg's shared libraries and the page test Debian's chromium and
# chromium-driver: .ci/run installs them; without them those tests skip, saying so)
$(VENV)/.lmms-eval: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,lmms-eval,torchcodec,demo]"
	touch $@

# moviechat demo (Gradio): make demo RUN=runs/<run> [VIDEOS=<folder of videos>]
$(VENV)/.demo: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[demo]"
	touch $@

# SmolLM2-135M-Instruct, the real LLM of the tests: installed once with the rest, so the tests run offline after
SMOLLM2 := .cache/llm/SmolLM2-135M-Instruct
$(SMOLLM2)/.complete: $(VENV)/.installed
	$(BIN)/moviechat get-smollm2 --out $(SMOLLM2)

train: $(VENV)/.installed
	$(BIN)/moviechat train --cfg configs/experiments/tiny_synthetic.yaml

# Video-LLaMA's stage-2 mixture in miniature: a generated instruction set (written once), then the tiny model on it
train-mixture: $(VENV)/.installed
	$(BIN)/moviechat make-synthetic-instruct --cfg configs/experiments/tiny_instruct_mixture.yaml --out data/synthetic_instruct
	$(BIN)/moviechat train --cfg configs/experiments/tiny_instruct_mixture.yaml

# tests run in parallel worker processes (pytest-xdist), one per core up to 4; TEST_WORKERS=0 runs them in this one;
# the fifteen slowest are listed at the end, the tail to shorten
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

# COVERAGE=1: branch coverage of moviechat/ (subprocesses included), a table of the least-covered modules
COVERAGE_ARGS := --cov=moviechat --cov-branch --cov-report=
PYTEST := $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) $(if $(filter-out 0,$(TEST_WORKERS)),--dist worksteal) $(if $(COVERAGE),$(COVERAGE_ARGS))

test: $(VENV)/.lmms-eval $(SMOLLM2)/.complete
	$(PYTEST)

# the inner loop, offline: every test that starts no training, torchrun, sweep or install process and needs no real LLM
test-fast: $(VENV)/.lmms-eval $(SMOLLM2)/.complete
	$(PYTEST) -m "not slow and not real_llm"

# the whole suite with coverage: the total, then the ten least-covered modules
coverage:
	$(MAKE) test COVERAGE=1
	@echo "branch coverage of moviechat/: $$($(BIN)/python -m coverage report --format=total)%; the least covered:"
	@$(BIN)/python -m coverage report --sort=cover | sed -n '3,12p'

demo: $(VENV)/.demo
	@test -n "$(RUN)" || { echo "usage: make demo RUN=<run folder, checkpoint or hf export> [VIDEOS=<folder>]"; exit 2; }
	$(BIN)/moviechat demo $(RUN) $(if $(VIDEOS),--videos $(VIDEOS))

sweep: $(VENV)/.installed
	$(BIN)/moviechat sweep --sweep configs/sweeps/tiny_memory.yaml

# SmolLM2-135M-Instruct as a local Hugging Face folder (.cache/llm/), for configs/experiments/smollm2_*.yaml
smollm2: $(SMOLLM2)/.complete

bench-memory: $(VENV)/.installed
	$(BIN)/python benchmarks/memory.py

lmms-eval: $(VENV)/.lmms-eval

clean-venv:
	rm -rf $(VENV)
