# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
# TORCH_SPEC is installed before the project so that pip keeps the small CPU wheel it finds locally;
# override it for a GPU build, e.g. `make test TORCH_SPEC="torch --index-url ..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.maskctrl-installed
# A second venv with the `imitation` extra: imitation 1.0 pins gymnasium ~=0.29 and stable-baselines3 ~=2.2,
# while .venv keeps gymnasium 1.x. Its tests run there, with a core smoke test under gymnasium 0.29.
IMITATION_VENV ?= .venv-imitation
IBIN := $(IMITATION_VENV)/bin
IPIP := $(IBIN)/python -m pip -q --disable-pip-version-check
ISTAMP := $(IMITATION_VENV)/.maskctrl-installed
IMITATION_SMOKE ?= tests/test_masks.py tests/test_transformer.py tests/test_dynamics.py tests/test_mpc.py
export MPLBACKEND ?= Agg
export MUJOCO_GL ?= egl

.PHONY: setup setup-imitation test lint typecheck unit imitation demo checkpoints critics bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(STAMP)

$(ISTAMP): pyproject.toml
	test -x $(IBIN)/python || $(PYTHON) -m venv $(IMITATION_VENV)
	$(IPIP) install --upgrade pip
	$(IPIP) install "$(TORCH_SPEC)"
	$(IPIP) install -e ".[imitation,dev]"
	touch $@

setup-imitation: $(ISTAMP)

lint: setup
	$(BIN)/ruff check maskctrl tests benchmarks examples
	$(BIN)/ruff format --check maskctrl tests benchmarks examples

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q -m "not slow and not gpu" -p no:cacheprovider

imitation: setup-imitation
	$(IBIN)/pytest -q -m "not slow and not gpu" -p no:cacheprovider tests/imitation $(IMITATION_SMOKE)
	$(IBIN)/pytest -q -m "not slow and not gpu" -p no:cacheprovider tests/test_readme.py -k venv

test: lint typecheck unit imitation

demo: setup
	$(BIN)/maskctrl demo

# Rebuild the default pretrained backbones shipped in maskctrl/checkpoints/ (see maskctrl/recipes.py).
checkpoints: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m maskctrl.recipes
	$(BIN)/python benchmarks/readme_results.py

# Rebuild the Hopper safety critic shipped in maskctrl/critics/Hopper/ (see maskctrl/critic_recipe.py; ~55 min on 2 cores).
critics: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m maskctrl.critic_recipe

# API reference rendered from the docstrings by pdoc (installed into .venv on first use, not a dev dependency).
DOCS_OUT ?= docs/api
docs: setup
	$(BIN)/python -c "import pdoc" 2>/dev/null || $(PIP) install "pdoc>=14"
	$(BIN)/python docs/build.py --out $(DOCS_OUT)

bench: setup
	$(BIN)/python benchmarks/backbone.py
	$(BIN)/python benchmarks/mpc_oracle.py

clean:
	rm -rf $(VENV) $(IMITATION_VENV) .mypy_cache .ruff_cache .pytest_cache
