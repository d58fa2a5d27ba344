# Quick start: `make train` (train + evaluate the default model on the bundled digits), `make test`.
# Both create .venv and install the package on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this version installs quickly offline here; override with e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# The timm integration gets an environment of its own: timm imports torchvision, whose wheels here load only
# with the CUDA build of torch (which runs on CPUs too), while .venv keeps the small CPU build. `make test`
# runs tests/integrations/test_timm.py there too (in .venv it is skipped). The two pins must match each other.
TIMM_VENV ?= .venv-timm
TIMM_TORCH_SPEC ?= torch==2.14.1
TORCHVISION_SPEC ?= torchvision==0.29.1
TIMM_PY := $(TIMM_VENV)/bin/python

.PHONY: install train test test-timm test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[all]"
	touch $@

$(TIMM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_PY) -m pip install -q "$(TIMM_TORCH_SPEC)" "$(TORCHVISION_SPEC)" -e ".[train,plot,dev,timm]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/cct train

test: $(VENV)/.installed
	$(PY) -m pytest
	$(MAKE) test-timm

test-timm: $(TIMM_VENV)/.installed
	$(TIMM_PY) -m pytest tests/integrations/test_timm.py tests/test_readme.py -k timm

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs
