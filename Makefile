# Two commands from zero: `make run` (the demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint check bench bench-quick docs clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## start the orchestrator on SQLite and fire the example morning run
	$(BIN)/orchestrator serve --config config/orchestrator.toml --sidecar research=handlers.fake_research:create_app --fire morning

test: $(STAMP)  ## run the whole test suite with branch coverage, a worker per core
	$(BIN)/pytest -n auto --cov --cov-report=term-missing:skip-covered

test-all: $(STAMP)  ## the suite with the fuzz tests at full strength (HYPOTHESIS_PROFILE=long, ~10 min)
	HYPOTHESIS_PROFILE=long $(BIN)/pytest -n auto

lint: $(STAMP)  ## ruff (lint and format) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test  ## everything CI runs

bench: $(STAMP)  ## benchmarks up to N = 10,000; writes bench/results.json and docs/benchmarks.md
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)  ## the same up to N = 1,000, about 3 minutes; writes bench/results-quick.json
	$(BIN)/python -m bench.run --quick

docs: $(STAMP)  ## regenerate docs/configuration.md from the settings and config models
	$(BIN)/python -m orchestrator.configdoc > docs/configuration.md

clean:  ## remove the virtualenv, caches and the demo database
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage orchestrator.db orchestrator.db-*
