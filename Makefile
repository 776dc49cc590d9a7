# tightfit: set-up, the example search, and the tests. Everything lands in .venv/.
PYTHON ?= python3
# On these machines this pins the CPU build already on disk; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu (or your CUDA build) before installing.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint clean

$(BIN)/tightfit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(BIN)/tightfit

run: setup  ## the main job: a 40-trial search on the digits example, then export its knee
	$(BIN)/tightfit search examples/digits.yaml
	$(BIN)/tightfit export --workdir runs/digits-resnet --pick knee --out engines/

test: lint  ## the test suite (what CI runs): lint, types, then pytest
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check tightfit tests benchmarks
	$(BIN)/mypy tightfit

clean:
	rm -rf runs engines .pytest_cache
