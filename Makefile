# `make run`: set up a virtual environment and run the pipeline (dvc repro) on the params.yaml preset.
# `make test`: set up and run the whole test suite (what CI runs); `make test-fast` leaves out the tests
# marked slow (full pipelines, Prefect flows, servers). All need EMBEDFORGE_MIRROR while the hub is unreachable.
# `make lint`: ruff's checks and its format check over the repository (configured in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-fast lint

$(BIN)/embedforge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[test,bench,s3,server]'
	touch $@

setup: $(BIN)/embedforge

run: setup
	embedforge run

test: setup
	python -m pytest -n 2

test-fast: setup
	python -m pytest -n 2 -m "not slow"

lint: setup
	ruff check .
	ruff format --check .
