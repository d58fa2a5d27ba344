# Quick start: `make train` (train + evaluate the default model on the bundled digits), `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this version installs quickly offline here; override with e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install train test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[all]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/cct train

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs
