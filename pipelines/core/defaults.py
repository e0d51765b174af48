"""Defaults every stage shares, each with its reason: CPU threads, and the context length per use of a model.

Threads: the cores this process may run on. `os.cpu_count()` counts the machine's cores even when the process is confined to fewer (`taskset`, a
container's cpuset, a batch scheduler's allocation); llama.cpp and torch given more threads than usable cores
spin against each other and run several times slower. `sched_getaffinity` is the set actually allowed.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


# Context lengths (tokens) by use. A longer context costs memory (llama.cpp allocates the KV cache for all of it
# up front, and lm-eval's scorer keeps logits for every position) and nothing else; a prompt that does not fit
# is refused with an error that names the limit.
N_CTX = {
    # slmkit serve and a served teacher: one chat request and its answer; llama.cpp server's own default size.
    "serve": 2048,
    # distill's in-process GGUF teacher: the system prompt, few-shot turns and one prompt, plus the answer.
    "teacher": 2048,
    # bench's GGUF targets and the endpoints bench starts: room for a few-shot baseline prompt (the demo's 8
    # shots are about 1.9k tokens) plus its answer.
    "bench": 4096,
    # lm-eval's GGUF scorer (logits_all: n_ctx x vocabulary floats); capped at the model's trained context.
    "lm_eval": 1024,
}

# Prefill batch (llama.cpp's n_batch and n_ubatch) of the contexts that answer requests: `slmkit serve`, a served
# teacher or baseline, and the in-process GGUF client. A prompt is prefilled in batches of this many tokens, and
# a shared prefix is reused only in whole batches (pipelines/backends/prefix_reuse.py), so the batch is also the
# reuse granularity: behind the demo's 8-shot prefix (~1,440 shared tokens of ~1,500) a 512-token batch reuses
# 1,024 and prefills ~480 tokens per request, a 128-token batch reuses 1,408 and prefills ~100. A prefill from
# scratch of 1,600 tokens costs about the same at 256 or 512 and ~15% more at 128 (Gemma 3 270M F16, 2 threads,
# AVX2 machine); llama.cpp's own default is 512.
PREFILL_BATCH = 128
