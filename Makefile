# U-Net Lens. `make run` sets up .venv and starts the dashboard on the shipped demo;
# `make test` sets up .venv and runs the test suite without the `slow` tests
# (`make test PYTEST_ARGS=` runs everything, as CI does).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# TF_CPP_MIN_LOG_LEVEL is left to the app (default 3: app/tf_setup.py); a value set here wins.
export PYTHONHASHSEED ?= 0
PYTEST_ARGS ?= -m "not slow"

.PHONY: run test lint demo xbd bench clean

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app serve

test: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(BIN)/ruff check app tests bench

# Rebuild the shipped demo (synthetic data → model → embeddings → maps → scores) with `build`:
# `python -m app demo` is `python -m app build` with the demo's run ids and parameters
# (DEMO_BUILD_ARGS in app/cli.py) and --overwrite. Resumable: a rerun skips unchanged steps.
demo: $(STAMP)
	$(BIN)/python -m app demo

# The whole path on the shared xBD scenes (not committed; see README): tiles at half resolution,
# a model trained for at most 25 min, embeddings, maps and held-out scores; ends with the command
# that serves it. Resumable: a rerun skips the steps whose inputs are unchanged. More flags go in
# BUILD_ARGS, e.g. `make xbd BUILD_ARGS=--overwrite` to replace a datasets/xbd made before `build`.
XBD ?= ../shared/data/xbd
BUILD_ARGS ?=
xbd: $(STAMP)
	$(BIN)/python -m app build --source xbd --root $(XBD) --run-id xbd-light --dataset-name xbd \
		--tile-size 256 --downscale 2 --crop 128 --max-minutes 25 --epochs 80 --patience 10 \
		$(BUILD_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf datasets .cache
