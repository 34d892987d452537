# waconv — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.DEFAULT_GOAL := help
.PHONY: help install install-test run test lint bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed  ## create .venv if missing and install waconv into it

install-test: $(VENV)/.installed-test

run: install  ## migrate the database and serve the app + a dispatcher on $(HOST):$(PORT)
	$(BIN)/waconv db upgrade
	$(BIN)/waconv serve --host $(HOST) --port $(PORT)

test: install-test  ## run the whole suite (also on PostgreSQL when WACONV_TEST_POSTGRES_URL is set)
	$(BIN)/python -m pytest -n auto --dist loadgroup $(PYTEST_ARGS)

LINT_PATHS := waconv tests migrations config wsgi.py $(wildcard bench)

lint: install-test  ## ruff, format check and mypy
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

BENCH_ARGS ?=

$(VENV)/.installed-bench: $(VENV)/.installed bench/requirements.txt
	$(BIN)/pip install -q -r bench/requirements.txt
	@touch $@

bench: $(VENV)/.installed-bench  ## benchmarks vs pywa, Meta's SDK and the bare stack; writes bench/RESULTS.md (BENCH_ARGS=--quick)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk; \
	  else echo "make bench needs wrk: sudo apt-get install wrk" >&2; exit 1; fi; }
	$(BIN)/python -m bench $(BENCH_ARGS)
