# Two entry points for a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_ARGS ?=   # e.g. make demo DEMO_ARGS="--threads 1" on a machine another job shares

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.headlens-installed

$(VENV)/.headlens-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU torch first (a bare `torch` requirement would pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/headlens demo --out demo-out $(DEMO_ARGS)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_batching.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_convergence.py
	$(PY) benchmarks/bench_transformers.py
	$(PY) benchmarks/bench_transformers.py --concepts default --repeats 3 --prompts 4

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf demo-out .pytest_cache
