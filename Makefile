# coinfer: `make run` starts the dashboard, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
# CPU=1: torch and torchvision (the versions pinned in requirements.txt) from PyTorch's CPU-only index, without the
# CUDA libraries of PyPI's build; for Linux and Windows (macOS wheels on PyPI have no CUDA anyway)
CPU ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup run test test-fast bench lint clean-cache

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dask.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(CPU),$(PY) -m pip install --quiet --index-url $(TORCH_CPU_INDEX) $$(grep -E '^torch(vision)?==' requirements.txt))
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	$(PY) -m streamlit run dashboard.py --server.address $(HOST) --server.port $(PORT)

test: setup
	$(PY) -m pytest -q -n 2

# unit tests only: no dataset, no training beyond synthetic tensors; seconds
test-fast: setup
	$(PY) -m pytest -q -n 2 tests/unit

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check .

clean-cache:
	rm -rf cache/models cache/results.sqlite* cache/jobs.sqlite* cache/jobs
