# The README's two commands. Each sets itself up on a fresh machine: a virtual environment,
# torch, the test dependencies and the extension build, then runs its job.
#   make demo   trains LeNet-5 on handwritten digits, then prints the self-check table
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH_PINS = torch==2.14.1 torchvision==0.29.1
export MAX_JOBS ?= 2
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test build clean

demo: $(VENV)/.built
	$(PY) -m cnnkernels.demo

test: $(VENV)/.built
	$(PY) -m pytest $(PYTEST_ARGS)

build: $(VENV)/.built

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_PINS) ninja setuptools wheel pytest expecttest numpy \
		scikit-learn matplotlib tqdm
	touch $@

# Rebuilds whenever a C++/CUDA source or the build configuration changes.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info cnnkernels/_C*.so $(VENV)
