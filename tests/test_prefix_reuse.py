"""Aligned prefix reuse (pipelines/backends/prefix_reuse.py): a context that keeps whole prefill batches of the
previous prompt gives every request exactly what a prefill from scratch gives, whatever ran before it."""

from __future__ import annotations

import numpy as np
import pytest

from slmkit.pipelines.backends import llama_adapter
from slmkit.pipelines.backends.prefix_reuse import prefix_reuse_mode, reuse_aligned_prefix
from slmkit.pipelines.core.defaults import PREFILL_BATCH

BATCH = 32  # small batches, so that a short prompt spans several and the tiny model's context holds them
SHARED = "Extract the ticket as JSON. " * 6  # a prefix longer than two batches, as a few-shot prompt is
ENDINGS = ["Hi, my order ORD-1 is late.", "PayFlow billed me twice!", "Where is my refund?", "Thanks, all good."]


def _open(tiny_gguf):
    return llama_adapter.open_llama(tiny_gguf, n_ctx=256, n_threads=1, n_batch=BATCH, n_ubatch=BATCH)


class _Answers:
    """Greedy answers of one context, with the logits its first token was sampled from."""

    def __init__(self, llm, fresh: bool) -> None:
        self.llm, self.fresh, self.first_logits = llm, fresh, None

        def watch(generate):
            def watched(tokens, *args, **kwargs):
                first = True
                for tok in generate(tokens, *args, **kwargs):
                    if first:
                        self.first_logits, first = llama_adapter.last_logits(llm), False
                    yield tok
            return watched

        llama_adapter.wrap_method(llm, "generate", watch)

    def __call__(self, prompt: str):
        if self.fresh:
            self.llm.reset()
        out = self.llm.create_completion(prompt, max_tokens=8, temperature=0.0)
        return out["choices"][0]["text"], self.first_logits


@pytest.fixture(scope="module")
def fresh(tiny_gguf):
    llm = _open(tiny_gguf)
    yield _Answers(llm, fresh=True)
    llm.close()


def _prompt_tokens(llm, prompt: str) -> int:
    return len(llm.tokenize(prompt.encode(), add_bos=True, special=True))


def test_every_order_gives_the_from_scratch_answer_and_reuses_whole_batches(tiny_gguf, fresh):
    prompts = [SHARED + e for e in ENDINGS]
    expected = {p: fresh(p) for p in prompts}
    shared_tokens = _prompt_tokens(fresh.llm, SHARED)
    assert shared_tokens > 2 * BATCH  # the test means something only if the prefix spans whole batches

    llm = _open(tiny_gguf)
    reuse = reuse_aligned_prefix(llm)
    answers = _Answers(llm, fresh=False)
    reused = []
    for p in prompts + prompts[::-1] + [prompts[1]] * 2:
        text, logits = answers(p)
        assert text == expected[p][0]
        assert np.array_equal(logits, expected[p][1])  # bit for bit, not merely the same argmax
        reused.append(reuse.reused)
    assert reused[0] == 0
    assert all(r > 0 and r % BATCH == 0 for r in reused[1:])
    assert max(reused) <= shared_tokens + BATCH  # never more than the common prefix's whole batches
    llm.close()


def test_a_conversation_that_repeats_the_answer_matches_from_scratch(tiny_gguf, fresh):
    llm = _open(tiny_gguf)
    reuse = reuse_aligned_prefix(llm)
    answers = _Answers(llm, fresh=False)
    first = SHARED + ENDINGS[0]
    reply, _ = answers(first)
    follow_up = first + reply + " And the refund?"
    expected = fresh(follow_up)
    assert answers(follow_up) == (expected[0], answers.first_logits)
    assert np.array_equal(answers.first_logits, expected[1])
    # The reply's tokens were decoded one at a time, never as a whole batch: they are not reused.
    assert reuse.reused <= _prompt_tokens(llm, first) // BATCH * BATCH
    llm.close()


def test_tokens_written_outside_a_prefill_are_no_longer_trusted(tiny_gguf):
    llm = _open(tiny_gguf)
    reuse = reuse_aligned_prefix(llm)
    llm.create_completion(SHARED + ENDINGS[0], max_tokens=2, temperature=0.0)
    assert reuse.trusted >= 2 * BATCH
    llama_adapter.rewind(llm, 10)
    llm.eval(llm.tokenize(b" other", add_bos=False))
    assert reuse.trusted == 10  # what the eval overwrote (position 10 on) is no longer trusted
    llm.create_completion(SHARED + ENDINGS[1], max_tokens=2, temperature=0.0)
    assert reuse.reused == 0  # 10 trusted tokens are no whole batch: the prompt is prefilled from scratch
    llm.close()


def test_modes_exclude_each_other():
    assert prefix_reuse_mode(False, False) == "aligned"
    assert prefix_reuse_mode(True, False) == "all"
    assert prefix_reuse_mode(False, True) == "none"
    with pytest.raises(ValueError, match="exclude each other"):
        prefix_reuse_mode(True, True)


def _first_eval_positions(client) -> list[int]:
    """Where each request's first eval starts, as the client's context stands when its prompt is evaluated."""
    starts: list[int] = []
    state = {"first": False}

    def watch_generate(generate):
        def watched(tokens, *args, **kwargs):
            state["first"] = True
            return (yield from generate(tokens, *args, **kwargs))
        return watched

    def watch_eval(evaluate):
        def watched(tokens):
            if state["first"]:
                starts.append(llama_adapter.position(client.llm))
                state["first"] = False
            return evaluate(tokens)
        return watched

    llama_adapter.wrap_method(client.llm, "eval", watch_eval)
    llama_adapter.wrap_method(client.llm, "generate", watch_generate)
    return starts


@pytest.mark.parametrize("from_scratch, reused", [(False, True), (True, False)])
def test_the_gguf_client_keeps_a_shared_prefix_unless_told_to_start_from_scratch(tiny_gguf, from_scratch, reused):
    from slmkit.pipelines.backends.base import ClientSpec, Request
    from slmkit.pipelines.backends.gguf_client import GGUFClient

    client = GGUFClient(ClientSpec(kind="gguf", location=str(tiny_gguf), api="completions", n_ctx=1024,
                                   n_threads=1, from_scratch=from_scratch))
    try:
        starts = _first_eval_positions(client)
        long_prefix = SHARED * 4  # longer than one prefill batch (PREFILL_BATCH): something a reusing client keeps
        texts = [client.complete(Request([{"role": "user", "content": long_prefix + e}], max_tokens=4)).text
                 for e in ENDINGS[:2] + ENDINGS[:1]]
    finally:
        client.close()
    assert starts[0] == 0
    assert all(s > PREFILL_BATCH for s in starts[1:]) if reused else starts == [0, 0, 0]
    assert texts[0] == texts[2]  # the same request, the same answer, either way


def test_prompt_cache_and_from_scratch_together_are_refused_naming_the_keys(tiny_gguf):
    from slmkit.pipelines.backends.base import ClientSpec
    from slmkit.pipelines.backends.gguf_client import GGUFClient
    from slmkit.pipelines.bench.targets import TargetConfig
    from slmkit.pipelines.core.errors import SlmkitError

    with pytest.raises(SlmkitError, match="bench target 'x'.*exclude each other"):
        GGUFClient(ClientSpec(kind="gguf", location=str(tiny_gguf), where="bench target 'x'", n_ctx=256,
                              prompt_cache=True, from_scratch=True))
    with pytest.raises(ValueError, match="`prompt_cache`.*`from_scratch`.*exclude each other"):
        TargetConfig(kind="gguf", model="smollm2-135m-instruct", prompt_cache=True, from_scratch=True)
    with pytest.raises(ValueError, match="for gguf targets and `serve` targets"):
        TargetConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", from_scratch=True)


def test_a_served_bench_target_passes_its_reuse_choice_to_the_server(monkeypatch):
    import contextlib

    from slmkit.pipelines import bench
    from slmkit.pipelines.bench.targets import TargetConfig
    from slmkit.pipelines.serving import local_endpoint

    seen: dict = {}

    @contextlib.contextmanager
    def fake_endpoint(serve, **kwargs):
        seen.update(kwargs, serve=serve)
        yield "http://127.0.0.1:9/v1", "stub"

    monkeypatch.setattr(local_endpoint, "local_endpoint", fake_endpoint)
    spec = TargetConfig(kind="openai", serve="gemma3-270m", api="completions", from_scratch=True)
    with bench.ready(spec, None) as (target, facts):
        assert target.from_scratch and facts["served"]["model"] == "gemma3-270m"
    assert seen["serve"] == "gemma3-270m" and seen["from_scratch"] is True and seen["prompt_cache"] is False
