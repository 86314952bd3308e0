# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test install-lint demo test test-all lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .

install-test: install
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps zennit==0.5.1

install-lint: install
	$(BIN)/pip install -q -e '.[lint]'

demo: install
	$(BIN)/sibnet demo

test: install-test
	$(BIN)/python -m pytest

test-all: install-test
	$(BIN)/python -m pytest -m ''

# ruff (pyflakes, pycodestyle at 120 columns, import order, docstrings) and mypy on the public API
lint: install-lint
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy
