# tunelab developer commands. `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
UV        := $(VENV)/bin/uv
BUF       := tools/node_modules/.bin/buf
# Services installed into the development environment (editable). Each is its own distribution.
SERVICES  := services/common services/datasets services/environments services/trainer services/gateway services/engine services/cli
STAMP     := $(VENV)/.installed
TORCH     ?= torch==2.13.0

.PHONY: help setup tools protos protos-check lint validate images compose-test test demo bench-prewarm bench-envbuild bench-gateway bench-train bench-vllm bench-vllm-rehearsal clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q uv

$(STAMP): $(PY) requirements-dev.txt $(wildcard services/*/pyproject.toml)
	# torch first, through pip, unless the venv has one: pip finds a local CPU wheel where the machine
	# provides one (PIP_FIND_LINKS); uv would fetch a multi-GB CUDA build. Override with TORCH=...
	$(PY) -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q "$(TORCH)"
	$(UV) pip install --python $(PY) -q -r requirements-dev.txt $(addprefix -e ,$(SERVICES))
	touch $@

setup: $(STAMP) tools  ## create .venv with every service and the dev tools (idempotent)

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $@

tools: tools/node_modules/.installed

# protos/baseline.binpb is the last accepted contract: `buf breaking` compares against it, and
# `make protos` refreshes it only after the comparison passes (a breaking change must be undone).
protos: $(STAMP) tools  ## regenerate stubs in services/common from protos/ (after lint and breaking checks)
	cd protos && ../$(BUF) lint && ../$(BUF) breaking --against baseline.binpb
	scripts/gen-protos.sh $(PY)
	cd protos && ../$(BUF) build -o baseline.binpb

protos-check: $(STAMP) tools  ## buf lint, buf breaking against the baseline, stubs in sync with protos/
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against baseline.binpb
	scripts/gen-protos.sh $(PY) --check

lint: $(STAMP) tools protos-check  ## ruff, mypy, buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

validate: setup  ## deploy files: hadolint, image locks, Compose v2's parser, promtool, kustomize + kubernetes-validate
	scripts/validate-deploy.sh

# The images compose.yaml and k8s/ name, built locally; IMAGES picks some (see docker/build.sh).
IMAGES ?=
images:  ## build the images (ghcr.io/tunelab/<name>:dev) from docker/, on digest-pinned bases
	PYTHON=$(PY) docker/build.sh $(IMAGES)

compose-test: setup  ## docker compose up for real: images built, the cpu stack walked through, k8s pods simulated (root)
	$(PY) scripts/compose_test

PYTEST_ARGS ?=
test: setup  ## run the test suite (real S3 servers and services are started by fixtures)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup  ## run the walkthrough on the embedded stack
	$(PY) scripts/demo.py

bench-prewarm: setup  ## prewarm benchmark against rclone and aws s3 sync (writes bench/results/prewarm.json)
	$(PY) bench/prewarm/run.py

bench-envbuild: setup  ## environment build benchmark against pip and uv (writes bench/results/envbuild.json)
	$(PY) bench/envbuild/run.py

bench-gateway: setup  ## gateway overhead vs direct, nginx and LiteLLM, with wrk (writes bench/results/gateway.json)
	$(PY) bench/gateway/run.py

bench-train:  ## LoRA training speed vs ChatGLM3's HF Trainer setup, on a GPU box with torch, transformers and peft (writes bench/results/train.json)
	python3 bench/train/run.py --ddp

bench-vllm:  ## real vLLM behind the gateway on a Linux GPU box with vLLM installed (writes bench/results/vllm.json)
	python3 bench/vllm/run.py

bench-vllm-rehearsal: setup  ## the bench-vllm flow on CPU, tunelab's embedded engine in vLLM's place
	$(PY) bench/vllm/run.py --engine embedded --concurrency 1,4 --rounds 2 --shared-rounds 1 --max-tokens 16

clean:  ## remove the environment and caches
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
