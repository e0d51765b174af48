"""A small OpenAI-compatible HTTP server over a GGUF model (llama-cpp-python), and `serve_gguf`, which runs it
as a subprocess for tests, benchmarks and the demo.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (no streaming).
The model runs one request at a time (a llama.cpp context is not thread-safe); concurrent requests queue,
which is what a single-slot llama.cpp server does too. `delay_ms` adds a fixed latency per request so
benchmarks can stand in for a network teacher whose time is mostly waiting.
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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from slmkit.pipelines.errors import SlmkitError

# Request fields passed through to llama-cpp-python, per endpoint.
_GEN_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "top_logprobs")
_COMPLETION_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "echo")


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

    llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads or 1, verbose=False,
                logits_all=False)
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
            route = self.path.rstrip("/")
            if req.get("model") not in (None, model_id):
                self._send(404, {"error": {"message": f"model '{req.get('model')}' not found; this server has "
                                                      f"'{model_id}'", "code": "model_not_found"}})
                return
            if delay_ms:
                time.sleep(delay_ms / 1000)
            try:
                with lock:
                    if route == "/v1/chat/completions":
                        kw = {k: req[k] for k in _GEN_FIELDS if k in req}
                        out = llm.create_chat_completion(messages=req.get("messages") or [], **kw)
                    elif route == "/v1/completions":
                        kw = {k: req[k] for k in _COMPLETION_FIELDS if k in req}
                        out = llm.create_completion(prompt=req.get("prompt") or "", **kw)
                    else:
                        self._send(404, {"error": {"message": f"no route {self.path}"}})
                        return
            except Exception as exc:  # the client sees an API error, the server keeps serving
                self._send(500, {"error": {"message": str(exc)}})
                return
            out["model"] = model_id
            self._send(200, out)

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

    Waits until /health answers, and always stops the server on exit (even on errors in the block).
    The model id the server answers to is the file's stem (see GET /v1/models).
    """
    import httpx

    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"serve_gguf: no GGUF file at {path}")
    port = port or free_port()
    cmd = [sys.executable, "-m", "slmkit.pipelines.serve", str(path), str(port), str(delay_ms), str(n_ctx),
           str(n_threads or 1)]
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
    serve_forever(Path(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]))
