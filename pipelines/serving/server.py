"""An OpenAI-compatible HTTP server over a GGUF model (llama-cpp-python), and `serve_gguf`, which runs it as a
subprocess for distill, bench, tests and the demo.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions, each of the POSTs
with or without `"stream": true` and with or without a `response_format` (json_object, json_schema: held to it
by a llama.cpp grammar) (server-sent events in OpenAI's chunk format, flushed as each piece is
decoded, so a client can time its first token; `stream_options.include_usage` adds a usage chunk).

Framework: FastAPI on uvicorn, not the standard library's http.server. The router will serve its own
OpenAI-compatible endpoint on the same framework, and a well-kept server does what slmkit had to hand-write
badly: HTTP parsing (a bad Content-Length is refused by h11 before any of slmkit's code runs), chunked
streaming (StreamingResponse), noticing a client that hangs up, graceful shutdown, IPv6 hosts. Request bodies
are read with a size cap and validated by the pydantic models in `serve_requests` (400 with OpenAI's error
body for anything wrong), and the prompt is formatted and tokenised in a worker thread outside the model's
lock, so a large or bad request never holds up the others.

Slots (`parallel`, `--parallel N`, default 1): N independent llama.cpp contexts (`Llama` instances) over the
same GGUF. The weights are mmap'd, so the OS shares one copy of them; each slot has its own KV cache (N × the
context's memory). A slot runs one request at a time (a llama.cpp context is not thread-safe); a request takes
the first free slot, and when all are busy requests wait in arrival order (FIFO), as llama.cpp server's slots
do. llama-cpp-python 0.3.36 has no continuous batching in its high-level API, so several contexts decoding
side by side (each with a share of the CPU threads) is what is real here, not one batched decode. To serve
many users at scale run llama.cpp's `llama-server -np N` (continuous batching) or vLLM, and register it as an
`openai` bench target or distill teacher (`openai:MODEL@http://HOST:PORT/v1`).

What a slot keeps between requests (pipelines/backends/prefix_reuse.py): by default the KV of the common prompt
prefix in whole prefill batches (n_batch tokens) only, so every batch is evaluated exactly as a prefill from
scratch would, and the same request gets the same answer whatever the server answered before; a few-shot or
system prefix longer than a batch is computed once. llama-cpp-python's own prefix cache, which evaluates from
wherever the common prefix ends, rounds other batch shapes differently and can change a greedy answer;
`prompt_cache=True` (`--prompt-cache`, llama.cpp server's `cache_prompt`) opts into it for every cached token,
and `from_scratch=True` (`--from-scratch`) prefills every prompt whole (scripts/bench_serve.py measures all
three). `usage.prompt_tokens_details.cached_tokens` says how many prompt tokens an answer took from the cache.

A client that disconnects stops its generation at the next token, streamed or not. `delay_ms` adds a fixed
latency before the first byte of every answer so benchmarks can stand in for a network endpoint whose time is
mostly waiting. With an API key (`--api-key-env VAR`), every /v1 route needs `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.pipelines.backends import llama_adapter, prefix_reuse
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.serving.requests import ApiError, ChatRequest, CompletionRequest, error_body, parse
from slmkit.pipelines.serving.token_stream import GenerationCancelled, LlamaHooks, TextPieces

_SHUTTING_DOWN = ApiError(503, "the server is shutting down", code="server_shutting_down")
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt that fits a small model's context
BODY_TIMEOUT_S = 60.0  # a client that starts a body and stalls is dropped after this long
_GEN_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class _Route:
    request: type  # the pydantic model of its body
    method: str  # the Llama method that answers
    input_param: str  # the request field that holds the input, for errors
    text: Callable[[dict], str]  # the answer's text, from the method's plain result
    chunk_object: str
    piece: Callable[[str], dict]  # one streamed choice carrying a piece of text
    first: dict | None  # the choice a stream opens with, before any text

    def kwargs(self, req) -> dict[str, Any]:
        """The Llama method's arguments for this request."""
        kw = {k: getattr(req, k) for k in _GEN_FIELDS if getattr(req, k) is not None}
        if isinstance(req, ChatRequest):
            if req.max_completion_tokens is not None:
                kw["max_tokens"] = req.max_completion_tokens
            kw["messages"] = [m.for_template() for m in req.messages]
        else:
            kw["prompt"] = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            kw["echo"] = req.echo
        grammar = response_grammar(req)
        if grammar is not None:
            kw["grammar"] = grammar
        return kw


def response_grammar(req):
    """The grammar that holds the answer to the request's `response_format` (None: plain text). The same
    converter as the gguf client's, so a loopback baseline constrains exactly as the in-process model does;
    a schema it cannot take is a 400 naming the parameter."""
    from slmkit.pipelines.backends.gguf_client import schema_grammar

    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
    param = "response_format.json_schema.schema" if schema is not None else "response_format"
    try:
        return schema_grammar(schema, param)
    except ValueError as exc:
        raise ApiError(400, str(exc), param=param, code="invalid_schema") from None


_ROUTES = {
    "/v1/chat/completions": _Route(
        ChatRequest, "create_chat_completion", "messages",
        lambda out: out["choices"][0]["message"].get("content") or "", "chat.completion.chunk",
        lambda t: {"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}),
    "/v1/completions": _Route(
        CompletionRequest, "create_completion", "prompt",
        lambda out: out["choices"][0]["text"], "text_completion",
        lambda t: {"index": 0, "text": t, "logprobs": None, "finish_reason": None},
        None),
}


def default_threads() -> int:
    """Every core this process may use: a server usually has the machine to itself, and llama.cpp decodes
    faster with them (but more threads than usable cores spin against each other)."""
    from slmkit.pipelines.core.defaults import usable_cores

    return usable_cores()


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


# --- the model ---------------------------------------------------------------------------------------------

class _Probe:
    """Stands in for the Llama that a chat handler is given: it formats the messages and tokenises the prompt
    like the real one, then hands the prompt tokens back instead of generating (no model state is touched)."""

    verbose = False

    class Prompt(Exception):
        def __init__(self, tokens: list[int]) -> None:
            self.tokens = tokens

    def __init__(self, llm) -> None:
        self.tokenize = llm.tokenize

    def create_completion(self, prompt, **_):
        raise self.Prompt(list(prompt))


def threads_per_slot(n_threads: int | None, parallel: int) -> int:
    """Each slot's CPU threads. `n_threads` (`--threads`) is the total for the server, not per slot: a user
    sizes it to the machine, and slots that together ask for more threads than there are cores spin against
    each other and decode slower than fewer would. So the total is split evenly (at least one each)."""
    return max(1, (n_threads or default_threads()) // parallel)


class _Slot:
    """One llama.cpp context over the engine's GGUF: its model, hooks and lock (one request at a time)."""

    def __init__(self, index: int, llm, reuse: str) -> None:
        self.index, self.llm = index, llm
        self.hooks = LlamaHooks(llm)
        self.lock = threading.Lock()
        # Before a request: a reset where every prompt is prefilled whole, else the KV is left to the reuse rule.
        self.prepare = prefix_reuse.install(llm, reuse)


class _Ticket:
    """A request waiting for a slot: `slot` is set, then `ready`, by the request that frees one."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.slot: _Slot | None = None


class SlotPool:
    """Hands each request a free slot, first come first served: a freed slot goes straight to the oldest
    waiter, so a request arriving later cannot overtake one already waiting. `busy` and `peak_busy` count the
    slots in use now and at most so far (for /health, and evidence in tests that slots really overlap)."""

    _POLL_S = 0.05  # how often a waiter checks whether its client has gone (it then leaves the queue)

    def __init__(self, slots: list[_Slot]) -> None:
        self.size = len(slots)
        self._free = deque(slots)
        self._waiting: deque[_Ticket] = deque()
        self._mutex = threading.Lock()
        self.busy = self.peak_busy = 0

    def acquire(self, cancelled: Callable[[], bool]) -> _Slot | None:
        """A slot for this request (blocking, in a worker thread), or None if it was cancelled while waiting."""
        with self._mutex:
            if self._free and not self._waiting:
                return self._take(self._free.popleft())
            ticket = _Ticket()
            self._waiting.append(ticket)
        while not ticket.ready.wait(self._POLL_S):
            if cancelled():
                with self._mutex:
                    if ticket.slot is None:  # not handed one yet: leave the queue
                        self._waiting.remove(ticket)
                        return None
        return ticket.slot

    def release(self, slot: _Slot) -> None:
        with self._mutex:
            self.busy -= 1
            if self._waiting:
                ticket = self._waiting.popleft()
                ticket.slot = self._take(slot)
                ticket.ready.set()
            else:
                self._free.append(slot)

    def _take(self, slot: _Slot) -> _Slot:
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        return slot


class Engine:
    """One GGUF loaded into `parallel` slots, the pool that hands them out, and the checks a request passes
    before it may wait for one. `llm`, `hooks` and `lock` are the first slot's (with one slot, the model)."""

    def __init__(self, model_path: Path, n_ctx: int = N_CTX["serve"], n_threads: int | None = None,
                 prompt_cache: bool = False, parallel: int = 1, from_scratch: bool = False) -> None:
        check_parallel(parallel)
        threads = threads_per_slot(n_threads, parallel)
        try:
            self.reuse = prefix_reuse.prefix_reuse_mode(prompt_cache, from_scratch)
        except ValueError as exc:
            raise SlmkitError(f"slmkit serve: {exc}") from None
        self.slots = [_Slot(i, llama_adapter.open_for_requests(model_path, n_ctx, threads,
                                                                  what="slmkit serve"), self.reuse)
                      for i in range(parallel)]
        self.pool = SlotPool(self.slots)
        self.threads_per_slot = threads
        first = self.slots[0]
        self.llm, self.hooks, self.lock = first.llm, first.hooks, first.lock
        self.model_id = Path(model_path).stem
        self.n_ctx = self.llm.n_ctx()
        self.stopping = threading.Event()  # the server is shutting down: every generation stops at its next token
        # No token is longer than this, so a text of n_ctx × this many bytes is too long without tokenising it.
        self._max_token_bytes = llama_adapter.longest_token_bytes(self.llm)

    def prompt_tokens(self, route: _Route, kw: dict) -> int | None:
        """The prompt's length in tokens, counted as the model will count it (None: not countable here);
        ApiError(400) when it leaves no room in the context. Runs outside the model's lock."""
        param = route.input_param
        if route.method == "create_completion":
            data = kw["prompt"].encode("utf-8")
            self._refuse_if_longer(len(data), param)
            n = len(self.llm.tokenize(data, add_bos=True, special=True))
        else:
            self._refuse_if_longer(sum(len(str(m.get("content") or "").encode()) for m in kw["messages"]), param)
            llm = self.llm
            try:
                llama_adapter.chat_handler(llm)(llama=_Probe(llm), messages=kw["messages"])
                return None  # a handler that never asks for a completion: let the model's own check decide
            except _Probe.Prompt as p:
                n = len(p.tokens)
            except AttributeError:  # a handler that needs more of the model than the probe offers
                return None
            except Exception as exc:  # the chat template could not render these messages
                raise ApiError(400, f"the model's chat template cannot format these messages: {exc}",
                               param=param) from None
        if n >= self.n_ctx:
            raise ApiError(400, f"the prompt is {n} tokens, and this model's context holds {self.n_ctx} "
                                f"(at most {self.n_ctx - 1} prompt tokens, to leave room for an answer)",
                           param=param, code="context_length_exceeded")
        return n

    def _refuse_if_longer(self, n_bytes: int, param: str) -> None:
        if n_bytes >= self.n_ctx * self._max_token_bytes:
            raise ApiError(400, f"the prompt is {n_bytes} bytes, more than the {self.n_ctx} tokens of this "
                                "model's context can hold", param=param, code="context_length_exceeded")

    def generate(self, route: _Route, kw: dict, job: _Job) -> None:
        """Answer one request (in a worker thread): wait for a free slot, take its lock, reset its state unless
        the prompt cache is on, generate, and report to `job` as ("start"), ("piece", text)…, then ("done", out)
        or ("error", e)."""
        slot = self.pool.acquire(job.cancelled)
        if slot is None:
            job.emit("cancelled")
            return
        try:
            self._generate_in(slot, route, kw, job)
        finally:
            self.pool.release(slot)

    def _generate_in(self, slot: _Slot, route: _Route, kw: dict, job: _Job) -> None:
        try:
            with slot.lock:
                if job.cancelled():
                    job.emit("cancelled")
                    return
                slot.prepare()
                job.slot = slot
                slot.hooks.begin(job.token if job.streaming else None, job.cancelled)
                try:
                    out = getattr(slot.llm, route.method)(**kw)
                finally:
                    prefilled = slot.hooks.end()
        except GenerationCancelled:
            job.emit("cancelled")
            return
        except ValueError as exc:  # llama-cpp-python's own checks (e.g. the context) refuse the request
            code = "context_length_exceeded" if "context window" in str(exc) else None
            job.emit("error", ApiError(400, str(exc), param=route.input_param if code else None, code=code))
            return
        except Exception as exc:  # noqa: BLE001 - the client gets an API error; the server keeps serving
            print(f"slmkit serve: a request failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            job.emit("error", ApiError(500, f"generation failed: {exc}"))
            return
        out["model"] = self.model_id
        usage = out.get("usage") or {}
        if prefilled is not None and "prompt_tokens" in usage:
            usage["prompt_tokens_details"] = {"cached_tokens": max(0, usage["prompt_tokens"] - prefilled)}
        job.emit("done", out)


class _Job:
    """One request's generation as seen from the event loop: events queue up from the worker thread."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, streaming: bool) -> None:
        self.engine, self.loop, self.streaming = engine, loop, streaming
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pieces: TextPieces | None = None
        self.slot: _Slot | None = None  # the slot generating it, once it has one
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set() or self.engine.stopping.is_set()

    def emit(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def token(self, tok: int) -> None:
        """Each sampled token of a streamed answer (in the worker thread, under its slot's lock)."""
        if self.pieces is None:  # the stop strings are known once generation runs
            self.pieces = TextPieces(self.slot.llm, self.slot.hooks.stops)
            self.emit("start")
        piece = self.pieces.push(tok)
        if piece:
            self.emit("piece", piece)


# --- HTTP -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeOptions:
    delay_ms: int = 0
    api_key: str | None = None  # the key itself (read from the environment by serve_forever); never logged
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def create_app(engine: Engine, options: ServeOptions):
    """The FastAPI application that serves `engine`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="slmkit serve", docs_url=None, redoc_url=None, openapi_url=None)
    model_id = engine.model_id

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        headers = {"Connection": "close"} if exc.status in (408, 413) else None  # its body was left unread
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return JSONResponse(error_body(str(message)), status_code=exc.status_code)

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def health(_: Request):
        pool = engine.pool  # the slots, as llama.cpp server's /health reports slots_idle / slots_processing
        return JSONResponse({"status": "ok", "slots": pool.size, "slots_busy": pool.busy})

    async def models(request: Request):
        check_key(request)
        return JSONResponse({"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "slmkit"}]})

    async def read_body(request: Request) -> bytes:
        limit = options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {int(declared)} bytes; this server takes at most {limit} "
                                "(--max-body-bytes)", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over {limit} bytes, the most this server takes "
                                    "(--max-body-bytes)", code="request_too_large")
        return bytes(body)

    async def watch_disconnect(request: Request, job: _Job) -> None:
        """The client hanging up (or the response being complete) ends the generation at the next token."""
        while not job.cancelled():
            if (await request.receive())["type"] == "http.disconnect":
                job.cancel()

    async def answer(request: Request, route: _Route):
        check_key(request)
        try:
            body = await asyncio.wait_for(read_body(request), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f}s") from None
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is there to read it
        import anyio

        # Parsing and counting the prompt's tokens run in worker threads, outside the model's lock and off the
        # event loop: a large body takes its own time, not the other clients'.
        req = await anyio.to_thread.run_sync(parse, body, route.request)
        if req.model not in (None, model_id):
            raise ApiError(404, f"model '{req.model}' not found; this server has '{model_id}'", param="model",
                           code="model_not_found")
        if req.n > 1:
            raise ApiError(400, f"n={req.n}: this server returns one choice per request; send {req.n} requests",
                           param="n", code="unsupported_value")
        if isinstance(req, CompletionRequest) and isinstance(req.prompt, list) and len(req.prompt) != 1:
            raise ApiError(400, "one prompt per request: send a string (or a list of one)", param="prompt",
                           code="unsupported_value")
        if req.stream and getattr(req, "echo", False):
            raise ApiError(400, "echo is not supported with stream", param="echo", code="unsupported_value")
        if req.wants_logprobs():
            raise ApiError(400, "this server does not return logprobs (the model is loaded without per-token "
                                "logits)", param="logprobs", code="unsupported_value")
        kw = route.kwargs(req)
        await anyio.to_thread.run_sync(engine.prompt_tokens, route, kw)
        job = _Job(engine, asyncio.get_running_loop(), req.stream)
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            if options.delay_ms:
                await asyncio.sleep(options.delay_ms / 1000)
            threading.Thread(target=engine.generate, args=(route, kw, job), daemon=True,
                             name="slmkit-serve-generate").start()
            kind, value = await job.queue.get()
        except BaseException:  # cancelled (the server stops): the generation must stop too
            job.cancel()
            watcher.cancel()
            raise
        if req.stream and kind in ("start", "done"):
            return StreamingResponse(sse(route, req.include_usage, job, watcher, (kind, value)),
                                     headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        job.cancel()
        watcher.cancel()
        if kind == "error":
            raise value
        if kind == "cancelled":
            if engine.stopping.is_set():
                raise _SHUTTING_DOWN
            return Response(status_code=499)  # the client has gone; nothing is sent
        return JSONResponse(value)

    async def sse(route: _Route, include_usage: bool, job: _Job, watcher: asyncio.Task, first: tuple):
        """The events of one streamed answer: the opening chunk, a chunk per piece of text, then the rest of the
        plain answer, the finish reason, usage if asked, and [DONE]."""
        chunk_id = ("chatcmpl-" if route.first else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())

        def event(choices: list[dict] | None = None, raw: str | None = None, **extra) -> bytes:
            payload = raw if raw is not None else json.dumps(
                {"id": chunk_id, "object": route.chunk_object, "created": created, "model": model_id,
                 "choices": choices, **extra})
            return f"data: {payload}\n\n".encode()

        try:
            kind, value = first
            if route.first:
                yield event([route.first])
            while kind != "done":
                if kind == "piece":
                    yield event([route.piece(value)])
                elif kind == "error":  # headers are out: the error travels as an event, as OpenAI's does
                    yield event(raw=json.dumps(value.body()))
                    yield event(raw="[DONE]")
                    return
                elif kind == "cancelled":
                    if engine.stopping.is_set():
                        yield event(raw=json.dumps(_SHUTTING_DOWN.body()))
                        yield event(raw="[DONE]")
                    return
                kind, value = await job.queue.get()
            out = value
            text = route.text(out)
            rest = job.pieces.finish(text) if job.pieces else text
            if rest:
                yield event([route.piece(rest)])
            last = route.piece("") | {"finish_reason": out["choices"][0].get("finish_reason")}
            if route.first:
                last["delta"] = {}
            yield event([last])
            if include_usage:
                yield event([], usage=out["usage"])
            yield event(raw="[DONE]")
        finally:  # done, or the client went away mid-stream: stop generating either way
            job.cancel()
            watcher.cancel()

    # Starlette-style routes (the endpoint takes the request): the body is read and validated by `answer`
    # itself, so that its size is capped before it is parsed and every problem is a 400 in OpenAI's shape.
    def post(route: _Route):
        async def endpoint(request: Request):
            return await answer(request, route)
        return endpoint

    for path in ("/health", "/v1/health"):
        app.router.add_route(path, health, methods=["GET"])
    app.router.add_route("/v1/models", models, methods=["GET"])
    for path, route in _ROUTES.items():
        app.router.add_route(path, post(route), methods=["POST"])
        app.router.add_route(path + "/", post(route), methods=["POST"])
    return app


def _protocol_class():
    """uvicorn's h11 protocol, answering a request it cannot parse (e.g. `Content-Length: abc`) with OpenAI's
    error body instead of plain text."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            data = json.dumps(error_body("the request is not valid HTTP/1.1 (e.g. a bad Content-Length "
                                         "header)", code="invalid_http")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=data), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


class Server:
    """A bound socket and the app over a loaded model. `serve_forever()` blocks (run it in a thread to serve
    in-process); `shutdown()`, from another thread, stops it and waits; `server_close()` frees the port.
    Stopping (these, Ctrl-C or SIGTERM) ends the generations in flight at their next token, and their clients
    get a 503, so the server exits at once instead of finishing every answer first."""

    def __init__(self, engine: Engine, sock: socket.socket, options: ServeOptions) -> None:
        import uvicorn

        class Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:  # Ctrl-C or SIGTERM
                engine.stopping.set()
                super().handle_exit(sig, frame)

        self.engine, self.socket = engine, sock
        config = uvicorn.Config(create_app(engine, options), log_config=None, log_level="warning",
                                access_log=False, lifespan="off", ws="none", http=_protocol_class(),
                                timeout_graceful_shutdown=5)
        self._server = Uvicorn(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.engine.stopping.set()
        self._server.should_exit = True
        self._stopped.wait(30)

    def server_close(self) -> None:
        self.socket.close()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or SlmkitError saying why not (port in use, out of range, unknown host)."""
    if not 0 < port < 65536:
        raise SlmkitError(f"slmkit serve: port {port} is out of range (1-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SlmkitError(f"slmkit serve: cannot listen on host '{host}': {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise SlmkitError(f"slmkit serve: port {port} on {host} is already in use; pick another with --port")\
                from None
        raise SlmkitError(f"slmkit serve: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def check_gguf(model_path: Path) -> Path:
    """`model_path` if it is a GGUF file, else SlmkitError naming what it is instead."""
    path = Path(model_path)
    if not path.exists():
        raise SlmkitError(f"slmkit serve: no GGUF file at {path}")
    if not path.is_file():
        raise SlmkitError(f"slmkit serve: {path} is not a file (give the .gguf file itself)")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SlmkitError(f"slmkit serve: cannot read {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise SlmkitError(f"slmkit serve: {path} is not a GGUF file (it does not start with 'GGUF')")
    return path


def check_parallel(parallel: int) -> int:
    """`parallel` if it is a slot count (1 or more), else SlmkitError, before any model is loaded."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise SlmkitError(f"slmkit serve: --parallel {parallel}: give 1 or more slots (llama.cpp contexts)")
    return parallel


def api_key_from_env(var: str | None) -> str | None:
    """The key held by the environment variable `var` (None: no key required). The key is never shown."""
    if var is None:
        return None
    from slmkit.pipelines.core.secrets import env_name_problem

    problem = env_name_problem(var)
    if problem:
        raise SlmkitError(f"slmkit serve: --api-key-env: {problem}")
    key = os.environ.get(var, "").strip()
    if not key:
        raise SlmkitError(f"slmkit serve: --api-key-env names {var}, which is not set (or empty)")
    return key


def make_server(model_path: Path, port: int, delay_ms: int = 0, n_ctx: int = N_CTX["serve"], n_threads: int | None = None,
                *, host: str = "127.0.0.1", prompt_cache: bool = False, api_key: str | None = None,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, parallel: int = 1, from_scratch: bool = False) -> Server:
    """A server bound and loaded, not yet serving. Start-up problems are SlmkitErrors: the port is taken or out
    of range, or the file is missing or not a GGUF. The port is checked first, so they come fast."""
    sock = bind(host, port)
    try:
        engine = Engine(check_gguf(model_path), n_ctx, n_threads, prompt_cache, parallel, from_scratch)
    except BaseException:
        sock.close()
        raise
    return Server(engine, sock, ServeOptions(delay_ms, api_key, max_body_bytes))


def serve_forever(model_path: Path, port: int, delay_ms: int = 0, n_ctx: int = N_CTX["serve"], n_threads: int | None = None,
                  *, host: str = "127.0.0.1", prompt_cache: bool = False, api_key_env: str | None = None,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, parallel: int = 1, from_scratch: bool = False) -> None:
    """`slmkit serve`: serve until interrupted (Ctrl-C or SIGTERM)."""
    check_parallel(parallel)
    check_gguf(model_path)
    api_key = api_key_from_env(api_key_env)
    server = make_server(model_path, port, delay_ms, n_ctx, n_threads, host=host, prompt_cache=prompt_cache,
                         api_key=api_key, max_body_bytes=max_body_bytes, parallel=parallel, from_scratch=from_scratch)
    shown = f"[{host}]" if ":" in host else host
    notes = [n for n, on in (("API key required", api_key), ("prompt cache on", prompt_cache),
                             ("every prompt prefilled from scratch", from_scratch),
                                 (f"{parallel} slots × {server.engine.threads_per_slot} threads", parallel > 1)) if on]
    print(f"serving {model_path} at http://{shown}:{port}/v1" + (f" ({', '.join(notes)})" if notes else ""),
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def serve_gguf(path: str | Path, port: int | None = None, delay_ms: int = 0, n_ctx: int = N_CTX["serve"],
               n_threads: int | None = None, ready_timeout: float = 120.0, *, prompt_cache: bool = False,
               host: str = "127.0.0.1", api_key_env: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log: Path | None = None,
               parallel: int = 1, from_scratch: bool = False) -> Iterator[str]:
    """Run `slmkit serve` on a GGUF in a subprocess; yields the base URL (http://127.0.0.1:PORT/v1).

    `n_threads=None` uses every core. Waits until /health answers, and always stops the server on exit (even
    on errors in the block). The model id the server answers to is the file's stem (see GET /v1/models).
    `prompt_cache`, `api_key_env` (a variable in this process's environment) and `max_body_bytes` are
    `slmkit serve`'s options, and so is `parallel` (slots; `n_threads` is then their total). The server's output goes to `log` (default: a temporary file whose tail is shown
    if the server exits early; never a pipe, which a chatty server could fill and block on).
    """
    import httpx

    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"serve_gguf: no GGUF file at {path}")
    check_parallel(parallel)
    port = port or free_port()
    cmd = [sys.executable, "-m", "slmkit.pipelines.serving.server", str(path), "--port", str(port), "--host", host,
           "--delay-ms", str(delay_ms), "--n-ctx", str(n_ctx), "--threads", str(n_threads or default_threads()),
           "--max-body-bytes", str(max_body_bytes)]
    cmd += ["--prompt-cache"] if prompt_cache else []
    cmd += ["--from-scratch"] if from_scratch else []
    cmd += ["--parallel", str(parallel)] if parallel != 1 else []
    cmd += ["--api-key-env", api_key_env] if api_key_env else []
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else
                                                          f"[{host}]" if ":" in host else host)
    base = f"http://{local}:{port}/v1"
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(log.open("wb") if log else tempfile.TemporaryFile())
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    err.flush()
                    tail = Path(log).read_bytes() if log else (err.seek(0), err.read())[1]
                    raise SlmkitError(f"serve_gguf: the server for {path} exited (code {proc.returncode}): "
                                      f"{tail.decode(errors='replace')[-2000:].strip()}")
                try:
                    if httpx.get(f"http://{local}:{port}/health", timeout=1.0).status_code == 200:
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


def _main(argv: list[str]) -> None:
    """The subprocess serve_gguf starts: `slmkit serve`'s options as flags; a start-up error is one line."""
    import argparse

    ap = argparse.ArgumentParser(prog="slmkit.pipelines.serving.server")
    ap.add_argument("model", type=Path)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=N_CTX["serve"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    ap.add_argument("--prompt-cache", action="store_true")
    ap.add_argument("--from-scratch", action="store_true")
    ap.add_argument("--api-key-env", default=None)
    ap.add_argument("--parallel", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        serve_forever(a.model, a.port, a.delay_ms, a.n_ctx, a.threads or None, host=a.host,
                      prompt_cache=a.prompt_cache, api_key_env=a.api_key_env, max_body_bytes=a.max_body_bytes,
                      parallel=a.parallel, from_scratch=a.from_scratch)
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    _main(sys.argv[1:])
