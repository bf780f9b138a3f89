# tunelab developer commands. `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
UV        := $(VENV)/bin/uv
BUF       := tools/node_modules/.bin/buf
# Services installed into the development environment (editable). Each is its own distribution.
SERVICES  := services/common services/datasets services/cli
STAMP     := $(VENV)/.installed

.PHONY: help setup tools protos protos-check lint test demo bench-prewarm clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q uv

$(STAMP): $(PY) requirements-dev.txt $(wildcard services/*/pyproject.toml)
	$(UV) pip install --python $(PY) -q -r requirements-dev.txt $(addprefix -e ,$(SERVICES))
	touch $@

setup: $(STAMP) tools  ## create .venv with every service and the dev tools (idempotent)

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $@

tools: tools/node_modules/.installed

protos: $(STAMP)  ## regenerate the gRPC stubs in services/common from protos/
	scripts/gen-protos.sh $(PY)

protos-check: $(STAMP) tools  ## fail when protos/ and the committed stubs drift apart; buf lint
	cd protos && ../$(BUF) lint
	scripts/gen-protos.sh $(PY) --check

lint: $(STAMP) tools protos-check  ## ruff, mypy, buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup  ## run the test suite
	$(VENV)/bin/pytest

demo: setup  ## run the walkthrough on the embedded stack
	$(PY) scripts/demo.py

bench-prewarm: setup  ## prewarm benchmark against rclone and aws s3 sync (writes bench/results/prewarm.json)
	$(PY) bench/prewarm/run.py

clean:  ## remove the environment and caches
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
