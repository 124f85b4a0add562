# `make train` and `make test` create and fill .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test bench-memory clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

# Until the trainer lands, the main job is the streaming-memory demo on a 2,048-frame video.
train: $(VENV)/.installed
	$(BIN)/python benchmarks/memory.py --frames 2048 --no-sweep

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench-memory: $(VENV)/.installed
	$(BIN)/python benchmarks/memory.py

clean-venv:
	rm -rf $(VENV)
