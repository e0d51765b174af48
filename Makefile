# slmkit — every target sets up what it needs. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test test-slow demo reproduce agent agent-student bench bench-all bench-curate bench-curate-ray bench-distill bench-faults bench-finetune bench-finetune-compile bench-finetune-memory bench-serve bench-serve-concurrency bench-route bench-quantize bench-quant-mixture bench-prefill bench-quantize-reference lint clean

setup: $(STAMP)

# llama-cpp-python compiles llama.cpp with -march=native, which on a CPU with AMX builds the AMX kernels; they
# crash (SIGSEGV in ggml_backend_amx_mul_mat) on machines of this kind that advertise AMX. GCC lets an explicit
# -mno-* win over -march=native, so the build keeps every other native instruction set. x86-64 only.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
endif

# Re-installs when pyproject.toml changes. torch is pinned to the CPU build that pip finds on these machines.
# A llama-cpp-python wheel taken from pip's cache may have been built with AMX: the check rebuilds it then.
$(STAMP): pyproject.toml scripts/check_llama_cpp.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -e '.[all]'
	$(BIN)/python -m pip install -q --no-deps bfcl-eval==2026.3.23  # BFCL's data files only (slmkit agent); its deps are not needed
	$(BIN)/python scripts/check_llama_cpp.py || { $(BIN)/python -m pip cache remove llama_cpp_python; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --force-reinstall --no-deps \
	    "llama-cpp-python==$$($(BIN)/python -c 'import llama_cpp; print(llama_cpp.__version__)')" \
	  && $(BIN)/python scripts/check_llama_cpp.py; }
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
	$(WIDE) $(BIN)/slmkit route --check recipes/demo.route.reported.json --results runs/demo/07_route/route.json
	$(WIDE) $(BIN)/slmkit agent --check recipes/demo.agent.reported.json --results runs/demo/08_agent/agent.json

# slmkit agent on the demo's refund workflow and three BFCL subsets, lm agency vs code agency, on the local SLM and
# the loopback baseline (recipes/agent-demo.yaml); agent.json is copied to bench-results/agent.json.
agent: setup
	$(WIDE) $(BIN)/slmkit run recipes/agent-demo.yaml
	mkdir -p bench-results && cp runs/agent-demo/08_agent/agent.json bench-results/agent.json

# A student trained for the workflow's code-mode steps on the teacher's traces (recipes/agent-student.yaml),
# measured untuned vs tuned; agent.json is copied to bench-results/agent_student.json.
agent-student: setup
	$(WIDE) $(BIN)/slmkit run recipes/agent-student.yaml
	mkdir -p bench-results && cp runs/agent-student/08_agent/agent.json bench-results/agent_student.json

lint: setup
	$(BIN)/ruff check cli pipelines evals slmkit tests scripts

# Benchmarks write JSON under bench-results/ (speed and memory targets live here, never in timed tests).
bench: setup
	$(BIN)/python scripts/bench_overhead.py

bench-all: bench bench-curate bench-distill bench-finetune bench-quantize

bench-curate: setup
	$(BIN)/python scripts/bench_curate.py

# curate on the local executor and on a local Ray cluster, same 1M-document pile (bench-results/curate_executors.json)
bench-curate-ray: setup
	$(BIN)/python scripts/bench_curate.py --docs $(or $(DOCS),1000000) --executor local --executor ray

# finetune's memory budget: measured peak of every micro-batch / checkpointing plan against its estimate, and
# a budgeted run's loss curve against the unbudgeted one (bench-results/finetune_memory.json)
bench-finetune-memory: setup
	$(BIN)/python scripts/bench_finetune_memory.py

bench-distill: setup
	$(BIN)/python scripts/bench_distill.py

# distill against a proxy that faults a quarter of the teacher's requests, killed twice and resumed: answers
# lost, answers paid for twice, and the wall time against a fault-free run (bench-results/faults.json).
bench-faults: setup
	$(BIN)/python scripts/bench_faults.py

# slmkit serve's time to first token with and without --prompt-cache, interleaved (bench-results/serve.json).
bench-serve: setup
	$(BIN)/python scripts/bench_serve.py

# The router's own cost: decision time per request (rules, classifier) and the served router against the local
# model served directly, interleaved (bench-results/route.json).
bench-route: setup
	$(BIN)/python scripts/bench_route.py

bench-finetune: setup
	$(BIN)/python scripts/bench_finetune.py

# finetune.torch_compile against eager, float32 and (where the CPU has native bf16) bf16 autocast, with each
# variant's loss per step; a variant's first step (where the layers compile) is not timed. About 8 minutes on
# 2 cores (bench-results/finetune_compile.json).
bench-finetune-compile: setup
	$(BIN)/python scripts/bench_finetune.py --compile --skip-memory --rounds $(or $(ROUNDS),2) --steps 4 \
	  --only slmkit_lora slmkit_lora_compiled slmkit_lora_bf16_autocast slmkit_lora_bf16_autocast_compiled \
	  --out bench-results/finetune_compile.json

# slmkit serve --parallel: throughput and TTFT by slots (1, 2) x concurrent clients (1, 4, 8).
bench-serve-concurrency: setup
	$(BIN)/python scripts/bench_serve_concurrency.py --slots 1 2 --clients 1 4 8

bench-quantize: setup
	$(BIN)/python scripts/bench_quantize.py

# 4-bit mixtures for rows K-quants cannot take (Q4_K_NL against llama.cpp's Q4_K_M and alternatives).
# MODEL=runs/demo/04_merge/model measures the demo's own fine-tuned model; default: the shipped SmolLM2.
# QM_ARGS="--model gemma3-270m --out bench-results/quant_mixture_gemma.json --only ..." for another model or a subset.
bench-quant-mixture: setup
	$(BIN)/python scripts/bench_quant_mixture.py $(if $(MODEL),--model $(MODEL)) $(QM_ARGS)

# Prefill time across prompt lengths and threads, the files interleaved (default: the demo's F16 and Q4_K_M).
PREFILL_FILES ?= runs/demo/05_quantize/model-f16.gguf runs/demo/05_quantize/model-Q4_K_M.gguf
bench-prefill: setup
	$(BIN)/python scripts/bench_prefill.py $(PREFILL_FILES)

# slmkit's export, importance matrix and Q4_K_M against llama.cpp's own tools, built from the source of the
# llama-cpp-python release installed (fetched with pip; about 5 minutes to build the first time).
bench-quantize-reference: setup
	$(BIN)/python scripts/bench_quantize_reference.py

clean:
	rm -rf runs bench-results .pytest_cache
