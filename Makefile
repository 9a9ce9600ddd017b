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

.PHONY: run test venv lint bench deploy clean sql

# Deployments (see README): a Prefect server must be running and PREFECT_API_URL set.
RECSYS_TIMEZONE ?= UTC
RECSYS_WORK_POOL ?= recsys
export RECSYS_TIMEZONE RECSYS_WORK_POOL

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "==> creating $(VENV) with $$($(PY) --version)"; $(PY) -m venv $(VENV); }
	@echo "==> installing recsys-nightly and its dependencies into $(VENV) (about 3 minutes on a fresh machine: TensorFlow, Prefect, Great Expectations, DuckDB, Polars)"
	@start=$$(date +%s); $(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; \
	  echo "==> installed $$($(BIN)/pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l) packages in $$(( $$(date +%s) - start )) s"
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/recsys nightly $(ARGS)

# Two pytest workers (pytest-xdist), a test module to a worker (its module fixtures are built once): alone the
# suite keeps about one core busy, its waits on servers, workers and subprocesses leave the other idle.
# TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# Style and the architecture: ruff, then the import-linter contracts (one-way layers, no cycles).
# Read-only SQL over the published tables: make sql Q="select * from latest_recommendations limit 5"
sql: $(STAMP)
	@$(BIN)/recsys sql "$(Q)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/recsys benchmark quality --dataset ml-100k --out var/benchmarks/quality.json

deploy: $(STAMP)
	$(BIN)/prefect work-pool inspect $(RECSYS_WORK_POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create $(RECSYS_WORK_POOL) --type process
	RECSYS_HOME=$${RECSYS_HOME:-$(CURDIR)/var} $(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

clean:
	rm -rf var .pytest_cache
