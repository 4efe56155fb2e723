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

# Rebuild the shipped demo (synthetic data → model → embeddings → maps) from scratch.
demo: $(STAMP)
	$(BIN)/python -m app demo

# Train and evaluate on the shared xBD scenes (not committed; see README).
XBD ?= ../shared/data/xbd
xbd: $(STAMP)
	$(BIN)/python -m app make-dataset --source xbd --root $(XBD) --name xbd --tile-size 256 --downscale 2
	$(BIN)/python -m app train --dataset datasets/xbd --run-id xbd-light --crop 128 --max-minutes 25 --epochs 80 --patience 10

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf datasets .cache
