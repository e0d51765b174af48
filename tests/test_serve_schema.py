"""`slmkit serve` honours OpenAI's `response_format` (json_object, json_schema) with a llama.cpp grammar on both
routes, streamed or not, so a loopback baseline is held to an agent's schemas as the in-process model is."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from test_backends import ACTION_SCHEMA

from slmkit.pipelines.backends import ClientSpec, Request, make_client
from slmkit.pipelines.serving.server import serve_gguf

CHAT = {"messages": [{"role": "user", "content": "Refund or escalate?"}], "max_tokens": 200, "temperature": 0}
AS_SCHEMA = {"type": "json_schema", "json_schema": {"name": "action", "schema": ACTION_SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def server(tiny_gguf):
    with serve_gguf(tiny_gguf, n_threads=1, n_ctx=512) as base:
        yield base


@pytest.mark.parametrize("route,body", [
    ("/chat/completions", CHAT),
    ("/completions", {"prompt": "Refund or escalate?", "max_tokens": 200, "temperature": 0}),
])
def test_json_schema_response_format_holds_the_answer_to_the_schema(server, route, body):
    r = httpx.post(server + route, json={**body, "response_format": AS_SCHEMA}, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"] if "message" in choice else choice["text"]),
                        ACTION_SCHEMA)


def test_json_object_gives_a_json_object(server):
    r = httpx.post(server + "/chat/completions", json={**CHAT, "max_tokens": 60,
                                                       "response_format": {"type": "json_object"}}, timeout=60)
    text = r.json()["choices"][0]["message"]["content"]
    # A random model may run to max_tokens inside an open string: the grammar guarantees a prefix of an object.
    assert text.lstrip().startswith("{")


def test_the_openai_client_through_the_server_gets_schema_valid_json_streamed(server):
    client = make_client(ClientSpec(kind="openai", location=server, model="tiny-f16", timeout=60))
    try:
        got = client.complete(Request(messages=CHAT["messages"], max_tokens=200, json_schema=ACTION_SCHEMA,
                                      stream=True))
    finally:
        client.close()
    jsonschema.validate(json.loads(got.text), ACTION_SCHEMA)


@pytest.mark.parametrize("fmt,param", [
    ({"type": "json_schema"}, "response_format"),
    ({"type": "yaml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "tensor"}}}, "response_format.json_schema.schema"),
])
def test_a_bad_response_format_is_a_400_naming_it(server, fmt, param):
    r = httpx.post(server + "/chat/completions", json={**CHAT, "response_format": fmt}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
