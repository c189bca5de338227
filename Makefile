# Two commands matter: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

.PHONY: install model demo run test test-faults lint typecheck clean

ENGINE_WHEELS := scripts/engine_wheels
$(STAMP): pyproject.toml client/pyproject.toml $(ENGINE_WHEELS)/install_cpu.sh \
		$(ENGINE_WHEELS)/lmdeploy-requirements.txt $(ENGINE_WHEELS)/surgery.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[api,preprocess,inference,webhook,dev]"
	$(BIN)/pip install --quiet -e ./client
	# LMDeploy (tested on the real package) and torchvision's transforms, CPU-safe.
	PIP=$(BIN)/pip PYTHON=$(BIN)/python bash $(ENGINE_WHEELS)/install_cpu.sh
	touch $@

install: $(STAMP)

model: install
	$(BIN)/python -m scripts.build_tiny_model

demo: model
	$(BIN)/python -m scripts.demo

test: model
	$(BIN)/python -m pytest

# SIGKILLs, restarts and freezes every part of a system started for it (about 6 minutes).
test-faults: model
	$(BIN)/python -m pytest -m faults tests/faults

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy shared services scripts benchmarks client tests

clean:
	rm -rf $(VENV) .local .models
