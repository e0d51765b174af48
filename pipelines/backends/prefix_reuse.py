"""Reusing a shared prompt prefix's KV cache without changing any answer: whole prefill batches only.

llama.cpp evaluates a prompt in batches of `n_batch` tokens from where the context stands. llama-cpp-python's
own prefix cache keeps the previous request's KV and evaluates the new prompt from the end of the common
prefix, wherever that falls, so the batches after it have other shapes, round differently, and greedy decoding
can give the same request another answer depending on what ran before (issue 13). A prefill from scratch
evaluates positions [0, B), [B, 2B), ... (B = n_batch). This module wraps one `Llama` instance so that a new
prompt reuses the KV only up to a multiple of B, and only positions that an earlier prefill itself computed as
whole batches from an aligned start; it evaluates the rest from that boundary in the same batches a prefill
from scratch would. Every position is then computed by the same batch, with the same KV before it, as from
scratch: the same logits bit for bit, whatever ran before (tests/test_prefix_reuse.py checks this on every
request order it tries). What it buys: a prompt prefix shared by every request (few-shot examples, a system
prompt, tool schemas) longer than B tokens is computed once; a prompt shorter than B gains nothing.

Positions written any other way (decoded tokens, an eval after a rewind) are never trusted for reuse: a
multi-turn conversation that repeats the previous answer re-evaluates it as a prefill from scratch would.
llama-cpp-python's exact-prefix cache (`prompt_cache=True`) stays the opt-in for those who want every cached
token and accept answers that depend on request order.
"""

from __future__ import annotations

from collections.abc import Callable

from slmkit.pipelines.backends import llama_adapter


class AlignedPrefixReuse:
    """Installed on one `Llama` (its `generate` and `eval`); `reused` is the last request's reused token count."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.trusted = 0  # positions [0, trusted) hold KV computed in whole batches from an aligned start
        self.reused = 0
        self._prefill_next = False
        llama_adapter.wrap_method(llm, "generate", self._wrap_generate)
        llama_adapter.wrap_method(llm, "eval", self._wrap_eval)

    def _wrap_generate(self, original):
        def generate(tokens, *args, **kwargs):
            self._prefill_next = True  # the first eval of a request is its prompt
            return (yield from original(tokens, *args, **kwargs))
        return generate

    def _wrap_eval(self, original):
        def evaluate(tokens):
            llm = self.llm
            at = llama_adapter.position(llm)
            if not self._prefill_next:
                self.trusted = min(self.trusted, at)  # anything written from `at` on is not a whole-batch prefill
                return original(tokens)
            self._prefill_next = False
            size = llama_adapter.batch_size(llm)
            start = min(at, self.trusted)
            start -= start % size
            tokens = llama_adapter.evaluated_tokens(llm, start, at) + list(tokens)
            llama_adapter.rewind(llm, start)
            self.reused, self.trusted = start, start
            result = original(tokens)
            end = llama_adapter.position(llm)
            self.trusted = end - end % size
            return result
        return evaluate


def reuse_aligned_prefix(llm) -> AlignedPrefixReuse:
    """Wrap `llm` so that consecutive requests reuse whole prefill batches of their common prefix (see above).
    The caller must not `reset()` the context between requests: that would throw the reusable prefix away."""
    return AlignedPrefixReuse(llm)


def prefix_reuse_mode(prompt_cache: bool, from_scratch: bool) -> str:
    """What a context does with the previous request's KV: 'aligned' (the default: whole prefill batches, the
    same answers as from scratch), 'all' (llama-cpp-python's exact-prefix cache: every common token, answers
    that may depend on order) or 'none' (every prompt prefilled from scratch)."""
    if prompt_cache and from_scratch:
        raise ValueError("`prompt_cache` (reuse every cached token) and `from_scratch` (reuse none) exclude each other")
    return "all" if prompt_cache else "none" if from_scratch else "aligned"


def install(llm, mode: str) -> Callable[[], None]:
    """Set one context up for `mode` (a prefix_reuse_mode); returns what its owner calls before each request:
    a reset for 'none', nothing otherwise ('aligned' rewinds inside eval, 'all' is llama-cpp-python's own)."""
    if mode == "aligned":
        reuse_aligned_prefix(llm)
    return llm.reset if mode == "none" else _keep


def _keep() -> None:
    """Before a request under 'aligned' or 'all': the KV stays for the reuse rule to use."""
