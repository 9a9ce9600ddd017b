# Two commands on a fresh machine: `make run` and `make test`. The venv is rebuilt only when
# pyproject.toml changed since it was installed.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
BIN := $(VENV)/bin

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1
export GX_ANALYTICS_ENABLED = false
export TF_CPP_MIN_LOG_LEVEL = 2
export KERAS_BACKEND = tensorflow

ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test venv lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/recsys nightly $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/recsys benchmark quality --dataset ml-100k --out var/benchmarks/quality.json

clean:
	rm -rf var .pytest_cache
