# sluice: the single entry point. Every target installs what it needs first, so each one
# works as the first command on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
PYSTAMP := $(VENV)/.installed-stamp
NODESTAMP := node_modules/.installed-stamp
STAGE   ?= dev
PYTEST_ARGS ?=

.PHONY: help setup test lint demo package lint-infra bench chaos clean

help:
	@echo "make demo        run the whole flow locally: burst -> queue -> drain -> workers -> MariaDB"
	@echo "make test        every test suite (unit, functional, integration, e2e, infra, chaos subset)"
	@echo "make lint        ruff + mypy"
	@echo "make package     package serverless.yml offline (STAGE=$(STAGE))"
	@echo "make lint-infra  cfn-lint + checkov on the packaged template"
	@echo "make bench       benchmarks, printed as ratios"
	@echo "make chaos       the full chaos suite"
	@echo "make clean       remove generated files and local state"

setup: $(PYSTAMP) $(NODESTAMP)

$(PYSTAMP): pyproject.toml
	@[ -x $(PY) ] || "$$(scripts/find-python)" -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

$(NODESTAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(PYSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Benchmarks print ratios measured side by side in one run (bench/results/latest.json + PNG).
BENCHSTAMP := $(VENV)/.bench-stamp
bench: $(BENCHSTAMP) $(NODESTAMP)
	$(PY) -m bench

$(BENCHSTAMP): $(PYSTAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@touch $@

clean:
	rm -rf .serverless .sluice .pytest_cache .mypy_cache .ruff_cache bench/results/*.json bench/results/*.png
