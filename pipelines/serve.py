"""A small OpenAI-compatible HTTP server over a GGUF model (llama-cpp-python), and `serve_gguf`, which runs it
as a subprocess for tests, benchmarks and the demo.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions, each of the POSTs
with or without `"stream": true` (server-sent events in OpenAI's chunk format, flushed as each piece is
decoded, so a client can time its first token; `stream_options.include_usage` adds a usage chunk).
The model runs one request at a time (a llama.cpp context is not thread-safe); concurrent requests queue,
which is what a single-slot llama.cpp server does too. `delay_ms` adds a fixed latency before the first byte
of every answer so benchmarks can stand in for a network endpoint whose time is mostly waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from slmkit.pipelines.errors import SlmkitError
from slmkit.pipelines.token_stream import LlamaHooks, TextPieces

# Request fields passed through to llama-cpp-python, per endpoint.
_GEN_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "top_logprobs")
_COMPLETION_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "echo")


@dataclass(frozen=True)
class _Route:
    fields: tuple[str, ...]  # request fields passed through to llama-cpp-python
    method: str  # the Llama method that answers
    feed: Callable[[dict], dict]  # the request's input, as that method takes it
    text: Callable[[dict], str]  # the answer's text, from the method's plain result
    chunk_object: str
    piece: Callable[[str], dict]  # one streamed choice carrying a piece of text
    first: dict | None  # the choice a stream opens with, before any text


_ROUTES = {
    "/v1/chat/completions": _Route(
        _GEN_FIELDS, "create_chat_completion", lambda r: {"messages": r.get("messages") or []},
        lambda out: out["choices"][0]["message"].get("content") or "", "chat.completion.chunk",
        lambda t: {"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}),
    "/v1/completions": _Route(
        _COMPLETION_FIELDS, "create_completion", lambda r: {"prompt": r.get("prompt") or ""},
        lambda out: out["choices"][0]["text"], "text_completion",
        lambda t: {"index": 0, "text": t, "logprobs": None, "finish_reason": None},
        None),
}

# A client that goes away mid-answer shows up as one of these on write; the server carries on.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def default_threads() -> int:
    """All the cores: a server usually has the machine to itself, and llama.cpp decodes faster with them."""
    return os.cpu_count() or 1


def free_port() -> int:
    """A free loopback port in slmkit's test range 18000-19999 (falls back to any free port)."""
    import random

    for port in random.sample(range(18000, 20000), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_server(model_path: Path, port: int, delay_ms: int = 0, n_ctx: int = 2048, n_threads: int | None = None):
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads or default_threads(), verbose=False,
                logits_all=False)
    hooks = LlamaHooks(llm)
    lock = threading.Lock()
    model_id = Path(model_path).stem

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: tests and benchmarks read stdout
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            """One piece of a chunked body, flushed at once: the client sees each token as it is decoded."""
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _event(self, body: dict | str) -> None:
            payload = body if isinstance(body, str) else json.dumps(body)
            self._chunk(f"data: {payload}\n\n".encode())

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "slmkit"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                req = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as exc:
                self._send(400, {"error": {"message": f"bad JSON: {exc}"}})
                return
            route = _ROUTES.get(self.path.rstrip("/"))
            if route is None:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            if req.get("model") not in (None, model_id):
                self._send(404, {"error": {"message": f"model '{req.get('model')}' not found; this server has "
                                                      f"'{model_id}'", "code": "model_not_found"}})
                return
            if req.get("stream") and req.get("echo"):
                self._send(400, {"error": {"message": "echo is not supported with stream"}})
                return
            kw = {k: req[k] for k in route.fields if k in req} | route.feed(req)
            if delay_ms:
                time.sleep(delay_ms / 1000)
            stream = _Stream(self, route, bool((req.get("stream_options") or {}).get("include_usage"))) \
                if req.get("stream") else None
            try:
                with lock:
                    hooks.on_token = stream.token if stream else None
                    try:
                        out = getattr(llm, route.method)(**kw)
                    finally:
                        hooks.on_token = None
            except _GONE:
                self.close_connection = True  # nobody is reading; the server carries on with the next
                return
            except Exception as exc:  # the client sees an API error, the server keeps serving
                if stream and stream.started:  # headers are out: the error travels as an event, as OpenAI's does
                    with contextlib.suppress(*_GONE):
                        stream.fail(str(exc))
                else:
                    self._send(500, {"error": {"message": str(exc)}})
                return
            out["model"] = model_id
            if stream:
                with contextlib.suppress(*_GONE):
                    stream.end(out)
            else:
                self._send(200, out)

    class _Stream:
        """One server-sent-event answer: headers and the opening chunk at the first token, a chunk per piece
        of text, then the rest of the plain answer, the finish reason, usage if asked, and [DONE]."""

        def __init__(self, handler: Handler, route: _Route, include_usage: bool) -> None:
            self.h, self.route, self.include_usage = handler, route, include_usage
            self.pieces = TextPieces(llm, [])
            self.started = False
            self.id = ("chatcmpl-" if route.first else "cmpl-") + uuid.uuid4().hex
            self.created = int(time.time())

        def _start(self) -> None:
            self.started = True
            self.pieces = TextPieces(llm, hooks.stops)  # the stop strings are known once generation runs
            self.h.send_response(200)
            self.h.send_header("Content-Type", "text/event-stream")
            self.h.send_header("Cache-Control", "no-cache")
            self.h.send_header("Transfer-Encoding", "chunked")
            self.h.end_headers()
            if self.route.first:
                self._send([self.route.first])

        def _send(self, choices: list[dict], **extra) -> None:
            body = {"id": self.id, "object": self.route.chunk_object, "created": self.created, "model": model_id,
                    "choices": choices, **extra}
            self.h._event(body)

        def token(self, tok: int) -> None:
            if not self.started:
                self._start()
            piece = self.pieces.push(tok)
            if piece:
                self._send([self.route.piece(piece)])

        def end(self, out: dict) -> None:
            if not self.started:
                self._start()
            rest = self.pieces.finish(self.route.text(out))
            if rest:
                self._send([self.route.piece(rest)])
            last = self.route.piece("") | {"finish_reason": out["choices"][0].get("finish_reason")}
            if self.route.first:
                last["delta"] = {}
            self._send([last])
            if self.include_usage:
                self._send([], usage=out["usage"])
            self._close()

        def fail(self, message: str) -> None:
            self.h._event({"error": {"message": message}})
            self._close()

        def _close(self) -> None:
            self.h._event("[DONE]")
            self.h._chunk(b"")  # the zero-length chunk that ends a chunked body

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def serve_forever(model_path: Path, port: int, delay_ms: int = 0, n_ctx: int = 2048, n_threads: int | None = None):
    if not Path(model_path).is_file():
        raise SlmkitError(f"slmkit serve: no GGUF file at {model_path}")
    server = make_server(model_path, port, delay_ms, n_ctx, n_threads)
    print(f"serving {model_path} at http://127.0.0.1:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def serve_gguf(path: str | Path, port: int | None = None, delay_ms: int = 0, n_ctx: int = 2048,
               n_threads: int | None = None, ready_timeout: float = 120.0) -> Iterator[str]:
    """Run `slmkit serve` on a GGUF in a subprocess; yields the base URL (http://127.0.0.1:PORT/v1).

    `n_threads=None` uses every core. Waits until /health answers, and always stops the server on exit (even
    on errors in the block). The model id the server answers to is the file's stem (see GET /v1/models).
    """
    import httpx

    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"serve_gguf: no GGUF file at {path}")
    port = port or free_port()
    cmd = [sys.executable, "-m", "slmkit.pipelines.serve", str(path), str(port), str(delay_ms), str(n_ctx),
           str(n_threads or default_threads())]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise SlmkitError(f"serve_gguf: the server for {path} exited (code {proc.returncode}): {err}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SlmkitError(f"serve_gguf: the server for {path} was not ready within {ready_timeout:.0f}s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


if __name__ == "__main__":  # the subprocess serve_gguf starts
    a = sys.argv[1:]
    serve_forever(Path(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]) or None)
