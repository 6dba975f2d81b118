# The two set-up commands of the README:
#   make run    trains the default VAE on real MNIST, then estimates log p(x)
#   make test   runs the test suite
# Each creates the virtual environment .venv here if it is missing and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision pinned to the builds this project is tested with.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

# Read real data from ../shared/data when it sits beside the repository.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/MNIST),)
export PPLVAE_DATA_DIR ?= $(SHARED_DATA)
endif

RUN_DIR ?= runs/mnist-vae
EPOCHS ?= 20
EVAL_SAMPLES ?= 5000
EVAL_EXAMPLES ?= 1000

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	rm -rf $(RUN_DIR)
	$(BIN)/pplvae train --dataset mnist --epochs $(EPOCHS) --out $(RUN_DIR)
	$(BIN)/pplvae evaluate $(RUN_DIR) --num-samples $(EVAL_SAMPLES) --max-examples $(EVAL_EXAMPLES)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
