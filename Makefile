# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
# TORCH_SPEC is installed before the project so that pip keeps the small CPU wheel it finds locally;
# override it for a GPU build, e.g. `make test TORCH_SPEC="torch --index-url ..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.maskctrl-installed
export MPLBACKEND ?= Agg
export MUJOCO_GL ?= egl

.PHONY: setup test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check maskctrl tests benchmarks examples
	$(BIN)/ruff format --check maskctrl tests benchmarks examples

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q -m "not slow and not gpu" -p no:cacheprovider

test: lint typecheck unit

demo: setup
	$(BIN)/maskctrl demo

bench: setup
	$(BIN)/python benchmarks/backbone.py
	$(BIN)/python benchmarks/mpc_oracle.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
