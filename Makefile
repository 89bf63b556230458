# `make run`: set up a virtual environment and run the pipeline (dvc repro) on the params.yaml preset.
# `make test`: set up and run the whole test suite (what CI runs); `make test-fast` runs tests/unit alone, leaving out
# what is marked slow by its directory (pipeline, servers, reliability, benchmarks). All need EMBEDFORGE_MIRROR.
# `make lint`: ruff's checks and its format check over the repository (configured in pyproject.toml).
# `make lock`: re-resolve the dependencies and pin them in constraints.txt, which `make setup` installs with.
# `make setup` byte-compiles the environment on every core at once (compileall -j 0) rather than file by file as pip
# does: 44 s against 98 s on 2 cores, the same .pyc files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-fast lint lock

EXTRAS := test,bench,s3,server

$(BIN)/embedforge: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install --no-compile torch==2.13.0
	$(BIN)/python -m pip install --no-compile -c constraints.txt -e '.[$(EXTRAS)]'
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
		> /dev/null || true  # a few files are written for newer Pythons (py312_intrinsics.py): pip skips them too
	touch $@

setup: $(BIN)/embedforge

run: setup
	embedforge run

test: setup
	python -m pytest -n 2

test-fast: setup
	python -m pytest -n 2 -m "not slow" tests/unit

# re-resolve every dependency from pyproject.toml in a scratch environment (minutes) and pin the result
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install torch==2.13.0
	.lock-venv/bin/python -m pip install '.[$(EXTRAS)]'
	head -3 constraints.txt > constraints.new
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^embedforge' >> constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

lint: setup
	ruff check .
	ruff format --check .
