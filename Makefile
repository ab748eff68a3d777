# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# DeepSpeed builds no CUDA ops here; nothing may be fetched from a model hub at run time.
export DS_BUILD_OPS := 0
export HF_HUB_OFFLINE := 1

.PHONY: demo test install install-test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: the CPU wheel of 2.13.0 lies on disk; a looser request pulls a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/editloop demo

test: install-test
	bash tests/ensure_services.sh
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
