# slmkit — every target sets up what it needs. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test test-slow demo reproduce bench bench-all bench-curate bench-distill bench-finetune bench-quantize bench-quantize-reference lint clean

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

# Rich draws tables to the terminal's width; logs (CI) get a wide one instead of 80 columns.
WIDE := COLUMNS=$${COLUMNS:-160}

# The main job: every stage of recipes/demo.yaml on the embedded models; ends with bench's table.
demo: setup
	$(WIDE) $(BIN)/slmkit run demo

# The demo again (resumed where it is already done), then its bench figures checked against the committed
# ones (quality within an absolute margin; speed as ratios between targets of the same run).
reproduce: setup
	$(WIDE) $(BIN)/slmkit run demo
	$(WIDE) $(BIN)/slmkit bench --check recipes/demo.reported.json --results runs/demo/06_bench/bench.json

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

# slmkit's export, importance matrix and Q4_K_M against llama.cpp's own tools, built from the source of the
# llama-cpp-python release installed (fetched with pip; about 5 minutes to build the first time).
bench-quantize-reference: setup
	$(BIN)/python scripts/bench_quantize_reference.py

clean:
	rm -rf runs bench-results .pytest_cache
