# slmkit — every target sets up what it needs. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test test-slow demo reproduce bench bench-all bench-curate bench-distill bench-finetune bench-quantize lint clean

setup: $(STAMP)

# Re-installs when pyproject.toml changes. torch is pinned to the CPU build that pip finds on these machines.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

demo: setup
	$(BIN)/slmkit run demo

lint: setup
	$(BIN)/ruff check cli pipelines evals slmkit tests scripts

# Benchmarks write JSON under bench-results/ (speed and memory targets live here, never in timed tests).
bench: setup
	$(BIN)/python scripts/bench_overhead.py

bench-all: bench bench-curate bench-distill bench-finetune bench-quantize

bench-curate: setup
	$(BIN)/python scripts/bench_curate.py

bench-distill: setup
	$(BIN)/python scripts/bench_distill.py

bench-finetune: setup
	$(BIN)/python scripts/bench_finetune.py

bench-quantize: setup
	$(BIN)/python scripts/bench_quantize.py

clean:
	rm -rf runs bench-results .pytest_cache
