# lfw: `make demo` sets everything up and runs the demo; `make test` sets up what is missing and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TINY   := build/tiny
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup tiny demo test test-fast lint format

setup: $(VENV)/.lfw-setup

# Training environment: lfw + LLaMA-Factory 0.9.5 + DeepSpeed + SwanLab (torch comes with them).
$(VENV)/.lfw-setup: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,dev]'
	touch $@

tiny: setup
	$(BIN)/python -m lfw.tiny $(TINY)

demo: tiny
	$(BIN)/lfw run recipes/tiny_cpu_demo.yml

test: tiny
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check wrapper tests scripts
	$(BIN)/ruff format --check wrapper tests scripts

format: setup
	$(BIN)/ruff format wrapper tests scripts
	$(BIN)/ruff check --fix wrapper tests scripts
