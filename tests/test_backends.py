"""The model-client layer: the shorthand, the registry, the retry policy, and each client's contract (text, token
counts, first-token time, stop strings, errors by kind) on scripted endpoints and tiny local models."""

from __future__ import annotations

import threading

import pytest
from helpers import ScriptEndpoint

from slmkit.pipelines import backends
from slmkit.pipelines.backends import (
    NO_RETRY,
    ClientSpec,
    Completion,
    Interrupted,
    Request,
    RequestError,
    RetryableError,
    RetryPolicy,
    make_client,
    parse_spec,
)
from slmkit.pipelines.backends.registry import CLIENTS
from slmkit.pipelines.backends.retry import retry_after
from slmkit.pipelines.core.errors import SlmkitError

HELLO = [{"role": "user", "content": "Say hello."}]


def _chat_body(text="hi", usage=True, finish="stop"):
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 2}
    return body


def _openai(url, **kw) -> backends.Client:
    return make_client(ClientSpec(kind="openai", location=url, model="m", where="test endpoint", timeout=10, **kw))


# ---------------------------------------------------------------- the shorthand and the registry

def test_one_shorthand_for_every_kind(tmp_path):
    assert parse_spec("openai:gpt-4o-mini@https://api.example.com/v1/") == backends.Spec(
        "openai", model="gpt-4o-mini", base_url="https://api.example.com/v1")
    assert parse_spec("gguf:models/a.gguf") == backends.Spec("gguf", path="models/a.gguf")
    assert parse_spec("hf:HuggingFaceTB/SmolLM2-135M") == backends.Spec("hf", model="HuggingFaceTB/SmolLM2-135M")
    (tmp_path / "m").mkdir()
    assert parse_spec(f"hf:{tmp_path / 'm'}") == backends.Spec("hf", path=str(tmp_path / "m"))
    for bad in ("openai:m", "openai:@http://x/v1", "openai:m@ftp://x", "vllm:x", "gguf:", "nocolon"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError) as err:  # a key in the shorthand is never quoted back
        parse_spec("openai:m@api.example.com/v1?api_key=sk-abcdef0123456789abcdef")
    assert "sk-abcdef" not in str(err.value)


def test_a_new_kind_is_one_registered_class(monkeypatch):
    monkeypatch.setitem(CLIENTS, "echo", None)

    @backends.register("echo")
    class Echo:
        def __init__(self, spec, policy, stop):
            self.spec = spec

        def complete(self, request):
            return Completion(request.messages[-1]["content"], 1, 1)

    client = make_client(ClientSpec(kind="echo", location="-"))
    assert isinstance(client, Echo) and client.complete(Request(messages=HELLO)).text == "Say hello."
    with pytest.raises(ValueError, match="no model client of kind 'nope'.*echo.*gguf.*hf.*openai"):
        make_client(ClientSpec(kind="nope", location="-"))


# ---------------------------------------------------------------- the retry policy

def test_retry_delay_backs_off_with_jitter_takes_retry_after_as_a_floor_and_is_capped():
    policy = RetryPolicy(retries=5, backoff=1.0, max_wait=30.0)
    for attempt in range(4):
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert 0.5 * 2 ** attempt <= min(delays) and max(delays) <= 1.5 * 2 ** attempt
        assert len(set(delays)) > 1  # jittered: workers failing together do not retry together
    assert policy.delay(0, 7.0) >= 7.0
    assert policy.delay(0, 86400.0) == 30.0 and policy.delay(10, None) == 30.0


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past: no wait
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_policy_retries_what_may_succeed_and_names_each_failed_attempt():
    script = [RetryableError("x", kind="http_503"), RetryableError("x", kind="timeout")]

    def once():
        if script:
            raise script.pop(0)
        return Completion("ok", 1, 1)

    ans = RetryPolicy(retries=3, backoff=0.0).call(once)
    assert (ans.text, ans.requests, ans.retried) == ("ok", 3, ["http_503", "timeout"])

    def always():
        raise RetryableError("x", kind="http_500")

    with pytest.raises(RetryableError) as err:
        RetryPolicy(retries=2, backoff=0.0).call(always)
    assert err.value.kind == "http_500" and err.value.retried == ["http_500", "http_500"]
    calls = []
    with pytest.raises(RetryableError):
        NO_RETRY.call(lambda: calls.append(1) or always())
    assert calls == [1]  # bench's policy: one attempt, the failure reported


def test_a_set_stop_sends_nothing_and_cuts_a_retry_wait_short():
    stop = threading.Event()
    stop.set()
    sent = []
    with pytest.raises(Interrupted):
        RetryPolicy().call(lambda: sent.append(1), stop)
    assert sent == []
    stop = threading.Event()

    def fail_then_stop():
        threading.Timer(0.05, stop.set).start()
        raise RetryableError("x", retry_after=3600.0, kind="http_429")

    with pytest.raises(Interrupted, match="waiting to retry"):  # a wait of an hour, ended by the stop
        RetryPolicy(retries=1, max_wait=3600.0).call(fail_then_stop, stop)


# ---------------------------------------------------------------- openai-compatible endpoints

def test_a_plain_chat_request_and_its_body():
    with ScriptEndpoint([(200, {}, _chat_body("hello there"))]) as ep:
        client = _openai(ep.url)
        ans = client.complete(Request(messages=HELLO, max_tokens=7, temperature=0.5, seed=3, stop=["\n"]))
        client.close()
    assert (ans.text, ans.prompt_tokens, ans.completion_tokens, ans.token_source) == ("hello there", 5, 2, "usage")
    assert ans.ttft_s is None and ans.e2e_s > 0 and ans.finish_reason == "stop"
    (req,) = ep.seen
    assert req["path"] == "/v1/chat/completions"
    assert req["body"] == {"model": "m", "messages": HELLO, "max_tokens": 7, "temperature": 0.5, "seed": 3,
                           "stop": ["\n"]}


def test_a_completions_client_sends_the_chat_as_one_text():
    with ScriptEndpoint([(200, {}, {"choices": [{"index": 0, "text": "B", "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 4, "completion_tokens": 1}})]) as ep:
        client = _openai(ep.url, api="completions")
        msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Q2"}]
        assert client.complete(Request(messages=msgs)).text == "B"
    assert ep.seen[0]["path"] == "/v1/completions" and ep.seen[0]["body"]["prompt"] == "Q\n\nA\n\nQ2\n\n"


def test_a_streamed_request_times_its_first_token_and_takes_usage():
    events = [{"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
              {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}, "[DONE]"]
    with ScriptEndpoint([("sse", events)]) as ep:
        ans = _openai(ep.url).complete(Request(messages=HELLO, stream=True))
    assert (ans.text, ans.prompt_tokens, ans.completion_tokens) == ("Hello", 9, 2)
    assert 0 < ans.ttft_s <= ans.e2e_s
    assert ep.seen[0]["body"]["stream"] is True and ep.seen[0]["body"]["stream_options"] == {"include_usage": True}


def test_without_usage_tokens_are_estimated_and_say_so():
    with ScriptEndpoint([(200, {}, _chat_body("abcdefgh", usage=False))]) as ep:
        ans = _openai(ep.url).complete(Request(messages=HELLO))
    assert ans.completion_tokens == 2 and ans.token_source == "estimate"


@pytest.mark.parametrize("events, problem", [
    ([{"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}], "ended before the answer"),
    ([{"error": {"message": "model crashed"}}], "model crashed"),
])
def test_a_broken_stream_is_this_requests_failure(events, problem):
    with ScriptEndpoint([("sse", events)]) as ep, pytest.raises(RequestError, match=problem) as err:
        _openai(ep.url).complete(Request(messages=HELLO, stream=True))
    assert not isinstance(err.value, RetryableError)


@pytest.mark.parametrize("reply, kind, retry_after_s", [
    ((503, {"Retry-After": "2"}, {"error": "busy"}), "http_503", 2.0),
    ((429, {"retry-after-ms": "1500"}, {"error": "slow down"}), "http_429", 1.5),
    ((200, {}, b"not json at all"), "malformed_body", None),
    ((200, {}, {"choices": []}), "malformed_body", None),
    (("hangup",), "connection_closed", None),
])
def test_retryable_failures_are_named_by_kind(reply, kind, retry_after_s):
    with ScriptEndpoint([reply]) as ep, pytest.raises(RetryableError) as err:
        _openai(ep.url).complete(Request(messages=HELLO))
    assert err.value.kind == kind and err.value.retry_after == retry_after_s


def test_a_refused_connection_is_retryable():
    from slmkit.pipelines.serving.server import free_port

    with pytest.raises(RetryableError) as err:
        _openai(f"http://127.0.0.1:{free_port()}/v1").complete(Request(messages=HELLO))
    assert err.value.kind in ("connection_refused", "connect_error")


@pytest.mark.parametrize("status, says", [(401, "refused the API key.*SLMKIT_TEST_KEY"),
                                          (403, "refused the API key"), (404, "model 'm' or its chat route")])
def test_a_config_problem_is_a_clear_error_and_not_retried(status, says, monkeypatch):
    monkeypatch.setenv("SLMKIT_TEST_KEY", "sk-test-0123456789abcdef")
    with ScriptEndpoint([(status, {}, {"error": "no"})]) as ep:
        client = make_client(ClientSpec(kind="openai", location=ep.url, model="m", where="distill.teacher",
                                        api_key_env="SLMKIT_TEST_KEY"), RetryPolicy(retries=3, backoff=0.0))
        with pytest.raises(SlmkitError, match=says) as err:
            client.complete(Request(messages=HELLO))
    assert len(ep.seen) == 1 and "sk-test" not in str(err.value)
    assert ep.seen[0]["headers"]["authorization"] == "Bearer sk-test-0123456789abcdef"


def test_a_bad_request_is_not_retried():
    with ScriptEndpoint([(400, {}, {"error": "context too long"})]) as ep:
        client = make_client(ClientSpec(kind="openai", location=ep.url, model="m"), RetryPolicy(retries=3))
        with pytest.raises(RequestError, match="HTTP 400.*context too long") as err:
            client.complete(Request(messages=HELLO))
    assert not isinstance(err.value, RetryableError) and len(ep.seen) == 1


def test_logprobs_are_asked_for_and_read_back():
    body = _chat_body("a")
    body["choices"][0]["logprobs"] = {"content": [{"token": "a", "logprob": -0.1, "top_logprobs": [
        {"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -2.5}]}]}
    with ScriptEndpoint([(200, {}, body)]) as ep:
        ans = _openai(ep.url).complete(Request(messages=HELLO, logprobs=2))
    assert ans.logprobs == [{"a": -0.1, "b": -2.5}]
    assert ep.seen[0]["body"]["logprobs"] is True and ep.seen[0]["body"]["top_logprobs"] == 2


# ---------------------------------------------------------------- local models

@pytest.fixture(scope="module")
def hf_client(tiny_model_dir):
    client = make_client(ClientSpec(kind="hf", location=str(tiny_model_dir), n_threads=1))
    yield client
    client.close()


def test_hf_greedy_is_the_same_answer_every_time_and_streams_its_first_token(hf_client):
    req = Request(messages=HELLO, max_tokens=12, stream=True)
    a, b = hf_client.complete(req), hf_client.complete(req)
    assert a.text == b.text and a.completion_tokens == b.completion_tokens > 0
    assert a.prompt_tokens > 0 and 0 < a.ttft_s <= a.e2e_s and a.token_source == "tokenizer"


def test_hf_sampling_follows_its_seed(hf_client):
    ask = lambda seed: hf_client.complete(Request(messages=HELLO, max_tokens=16, temperature=1.5,  # noqa: E731
                                                  seed=seed)).text
    assert ask(1) == ask(1)
    assert len({ask(s) for s in range(2, 6)}) > 1  # at a high temperature a random model's answers differ by seed


def test_hf_cuts_at_a_stop_string_and_gives_logprobs(hf_client):
    full = hf_client.complete(Request(messages=HELLO, max_tokens=16))
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = hf_client.complete(Request(messages=HELLO, max_tokens=16, stop=[stop]))
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    top = hf_client.complete(Request(messages=HELLO, max_tokens=4, logprobs=3))
    assert len(top.logprobs) == top.completion_tokens and all(len(t) <= 3 for t in top.logprobs)
    assert all(v <= 0 for t in top.logprobs for v in t.values())


def test_gguf_plain_and_streamed_answers_agree_and_count_the_prompt(tiny_gguf):
    client = make_client(ClientSpec(kind="gguf", location=str(tiny_gguf), n_ctx=512, n_threads=1))
    try:
        plain = client.complete(Request(messages=HELLO, max_tokens=12))
        streamed = client.complete(Request(messages=HELLO, max_tokens=12, stream=True))
        again = client.complete(Request(messages=HELLO, max_tokens=12))
    finally:
        client.close()
    assert plain.text == again.text and plain.prompt_tokens == streamed.prompt_tokens > 0
    assert plain.ttft_s is None and plain.completion_tokens > 0 and streamed.e2e_s > 0


@pytest.mark.parametrize("stream", [False, True])
def test_gguf_logprobs_are_the_models_own(tiny_gguf, stream):
    """The per-token log-probabilities read from the last logits match llama-cpp-python's own (which need
    logits for every position), one per answer token, the greedy token the likeliest."""
    from slmkit.pipelines.backends import llama_adapter
    from slmkit.pipelines.backends.base import completion_prompt

    client = make_client(ClientSpec(kind="gguf", location=str(tiny_gguf), api="completions", n_ctx=512,
                                    n_threads=1))
    try:
        got = client.complete(Request(messages=HELLO, max_tokens=10, logprobs=3, stream=stream))
        plain = client.complete(Request(messages=HELLO, max_tokens=10))
    finally:
        client.close()
    assert got.text == plain.text and plain.logprobs is None
    assert len(got.logprobs) == got.completion_tokens > 0
    assert all(len(t) <= 3 and max(t.values()) == next(iter(t.values())) for t in got.logprobs)
    ref_llm = llama_adapter.open_llama(tiny_gguf, n_ctx=512, n_threads=1, logits_all=True)
    try:
        ref = ref_llm.create_completion(prompt=completion_prompt(HELLO), max_tokens=10, logprobs=1,
                                        temperature=0.0)["choices"][0]
    finally:
        ref_llm.close()
    assert ref["text"] == got.text
    mine = [next(iter(t.values())) for t in got.logprobs]
    theirs = ref["logprobs"]["token_logprobs"][: len(mine)]
    assert mine == pytest.approx(theirs, abs=1e-3)


def test_a_missing_gguf_names_the_config(tmp_path):
    with pytest.raises(SlmkitError, match="bench target 'x': no GGUF file at"):
        make_client(ClientSpec(kind="gguf", location=str(tmp_path / "none.gguf"), where="bench target 'x'"))


# ---------------------------------------------------------------- schema-constrained output

# Every value bounded (enums, a boolean, llama.cpp's grammar caps an integer at 16 digits), so even a random
# model reaches the end of the object well within max_tokens.
ACTION_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["action", "amount", "urgent"],
                 "properties": {"action": {"enum": ["refund", "escalate"]}, "amount": {"type": "integer"},
                                "urgent": {"type": "boolean"}}}


@pytest.mark.parametrize("api,stream", [("chat", False), ("completions", True)])
def test_gguf_json_schema_holds_even_a_random_model_to_the_schema(tiny_gguf, api, stream):
    import json

    import jsonschema

    client = make_client(ClientSpec(kind="gguf", location=str(tiny_gguf), api=api, n_ctx=512, n_threads=1))
    try:
        free = client.complete(Request(messages=HELLO, max_tokens=30))
        held = client.complete(Request(messages=HELLO, max_tokens=200, json_schema=ACTION_SCHEMA, stream=stream))
    finally:
        client.close()
    with pytest.raises(ValueError):  # the random model left alone writes no JSON
        json.loads(free.text)
    jsonschema.validate(json.loads(held.text), ACTION_SCHEMA)


def test_gguf_a_schema_the_grammar_cannot_take_names_the_config(tiny_gguf):
    client = make_client(ClientSpec(kind="gguf", location=str(tiny_gguf), n_ctx=512, n_threads=1,
                                    where="agent target 'slm'"))
    try:
        with pytest.raises(SlmkitError, match="agent target 'slm': json_schema: .*cannot be enforced"):
            client.complete(Request(messages=HELLO, json_schema={"type": "tensor"}))
    finally:
        client.close()


def test_an_endpoint_is_sent_the_schema_as_response_format():
    with ScriptEndpoint([(200, {}, _chat_body('{"a": 1}')), (200, {}, {"choices": [{"text": "{}",
                                                                                     "finish_reason": "stop"}]})]
                        ) as ep:
        _openai(ep.url).complete(Request(messages=HELLO, json_schema=ACTION_SCHEMA))
        loose = {"type": "object", "properties": {"a": {"type": "integer"}}}
        _openai(ep.url, api="completions").complete(Request(messages=HELLO, json_schema=loose))
    chat, completions = (s["body"] for s in ep.seen)
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": ACTION_SCHEMA, "strict": True}}  # every key required, no others: strict
    assert completions["response_format"]["json_schema"]["strict"] is False  # optional `a`: strict would 400
    assert completions["json_schema"] == loose  # llama.cpp server's own field on its completions route
    assert "response_format" not in _openai_body_without_schema()


def _openai_body_without_schema() -> dict:
    with ScriptEndpoint([(200, {}, _chat_body())]) as ep:
        _openai(ep.url).complete(Request(messages=HELLO))
    return ep.seen[0]["body"]


def _generate_pushed_to_control_chars(path, grammar) -> str:
    """Greedy text from the tiny random model, every token that holds a control character (newline, tab, ...)
    raised far above the rest, under `grammar`: what comes out is what the grammar lets through."""
    import numpy as np
    from llama_cpp import Llama, LogitsProcessorList

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        pieces = [llm.detokenize([t]).decode("utf-8", "ignore") for t in range(llm.n_vocab())]
        control = np.array([any(ord(c) < 0x20 for c in p) for p in pieces])
        assert control.any(), "the tiny tokenizer should hold control characters"

        def push(_ids, logits):
            return np.where(control, logits + 1e4, logits)

        out = llm.create_completion("Write:", max_tokens=24, temperature=0.0, grammar=grammar,
                                    logits_processor=LogitsProcessorList([push]))
        return out["choices"][0]["text"]
    finally:
        llm.close()


def test_a_schema_grammar_keeps_control_characters_out_of_strings(tiny_gguf):
    import json

    from llama_cpp import LlamaGrammar

    from slmkit.pipelines.backends.gguf_client import schema_grammar

    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    # Where a string may hold any character but `"` and `\` (llama-cpp-python 0.3.36's converter writes that
    # rule), the pushed model writes control characters into it, and no JSON parser takes the text
    loose = _generate_pushed_to_control_chars(tiny_gguf, LlamaGrammar.from_string(
        r'root ::= "{\"answer\": \"" [^"\\]*', verbose=False))
    assert any(ord(c) < 0x20 for c in loose.split('"answer"', 1)[1])
    with pytest.raises(ValueError, match="control character"):
        json.loads(loose + '"}')
    # slmkit's grammar holds the string to JSON's characters, however hard the model pushes
    held = _generate_pushed_to_control_chars(tiny_gguf, schema_grammar(schema))
    assert held.startswith('{') and '"answer"' in held
    assert not any(ord(c) < 0x20 for c in held.split('"answer"', 1)[1])


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_a_frequency_penalty_breaks_a_local_models_repetition(kind, tiny_gguf, tiny_model_dir):
    """Greedy, the tiny random model repeats a few tokens; with OpenAI's frequency penalty at its maximum each
    repeat costs 2 logits, so the same request comes back with more distinct tokens."""
    from transformers import AutoTokenizer

    location = str(tiny_gguf if kind == "gguf" else tiny_model_dir)
    client = make_client(ClientSpec(kind=kind, location=location, api="completions", n_ctx=256, n_threads=1))
    try:
        plain = client.complete(Request(messages=HELLO, max_tokens=40))
        penalised = client.complete(Request(messages=HELLO, max_tokens=40, frequency_penalty=2.0))
    finally:
        client.close()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # the gguf's tokenizer too: exported from it

    def distinct(text):
        return len(set(tok(text, add_special_tokens=False)["input_ids"]))
    assert distinct(penalised.text) > distinct(plain.text), (plain.text, penalised.text)
