# aipaas: `make up` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --locked
export WHYLOGS_NO_ANALYTICS := True
export PYTHONUNBUFFERED := 1

.PHONY: help uv install up test test-fast lint bench soak demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

uv: ## install uv with pip if it is missing
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

install: uv ## build .venv from uv.lock (Python 3.11)
	$(UV) sync --locked --python 3.11

up: install ## start Prefect, MLflow, the runner and the API; run the lifecycle if no champion serves
	$(RUN) aipaas up

# Tests wait on servers and subprocesses as much as on the CPU (two workers
# kept 2 cores about 60% busy): three workers, one test file each at a time
# (a file's shared servers stay in one worker), on this 2-core machine.
TEST_WORKERS ?= 3

test: install ## install, then run every test
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install ## the tests that start no server and no Ray
	$(RUN) pytest -m "not slow and not e2e"

lint: install ## ruff and mypy
	$(RUN) ruff check aipaas flows serving models tests bench
	$(RUN) ruff format --check aipaas flows serving models tests bench
	$(RUN) mypy aipaas flows serving

bench: install ## benchmarks: print tables, write bench/results/
	$(RUN) python -m bench

SOAK_MINUTES ?= 10

soak: install ## the platform under sustained load for SOAK_MINUTES (10): bench/results/soak.{json,png}
	$(RUN) python -m bench.soak --minutes $(SOAK_MINUTES)

demo: install ## the whole loop: lifecycle, traffic, drift, retrain, swap
	$(RUN) aipaas demo

clean: ## remove the platform state under .aipaas/ (not data/ or the DVC remote copies elsewhere)
	rm -rf .aipaas
