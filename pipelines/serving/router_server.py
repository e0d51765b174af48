"""The served router: one OpenAI-compatible endpoint in front of the local GGUF and the remote model.

`slmkit serve --router runs/demo/07_route/router.json` loads the router route fitted (router.json: its kind,
weights, threshold, the local model's digest, the remote's config) and answers POST /v1/chat/completions,
deciding per request:

  rules / classifier   decide from the request; the chosen model answers. A local answer that fails the
                       task's validation escalates; a remote that fails (timeout, 5xx, garbage) falls back to
                       the local answer.
  cascade              the local model answers first; an answer that fails validation, or whose calibrated
                       confidence is below the threshold, escalates; a failing remote keeps the local answer.
Every answer says who answered and why: the `X-Slmkit-Route` / `X-Slmkit-Route-Reason` headers and a
`slmkit_route` field in the body. GET /v1/route/stats gives per-path counters and latencies.

Built on FastAPI and uvicorn like `slmkit serve`. The local model runs one request at a time (a llama.cpp
context is not thread-safe: its client holds a lock); each request runs in the server's thread pool, so remote
calls go out in parallel and never queue behind the local model. With `"stream": true`, a local answer that
nothing may replace (a router that decides first, and no check of the whole answer configured) streams as the
model makes it; otherwise the answer comes as server-sent events once it is decided: a router cannot release
text that validation or a cascade may still replace.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import statistics
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest  # module level: FastAPI resolves annotations here

from slmkit.pipelines.backends import NO_RETRY, ClientSpec, Request, make_client
from slmkit.pipelines.backends.base import Completion, RequestError
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.distill.validators import ValidateConfig, check
from slmkit.pipelines.route import file_digest, load_router, signals
from slmkit.pipelines.route.routers import RouterConfig, RulesRouter, make_router

MODEL_ID = "slmkit-router"
log = logging.getLogger("slmkit.router")


@dataclass
class Decision:
    answered_by: str  # local | remote
    reason: str
    completion: Completion
    score: float | None = None
    tried: list[str] = field(default_factory=list)  # the paths asked, in order


class PathStats:
    """Counters and recent latencies per path, for /v1/route/stats."""

    def __init__(self, keep: int = 2000):
        self._lock = threading.Lock()
        self.answered: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.latency_ms: dict[str, deque] = {"local": deque(maxlen=keep), "remote": deque(maxlen=keep)}

    def record(self, d: Decision, total_ms: float, failures: list[str]) -> None:
        with self._lock:
            self.answered[d.answered_by] += 1
            self.reasons[d.reason.split(":")[0]] += 1
            self.failures.update(failures)
            self.latency_ms[d.answered_by].append(total_ms)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = {}
            for path, values in self.latency_ms.items():
                v = sorted(values)
                lat[path] = {"requests": len(v), "p50_ms": round(statistics.median(v), 1) if v else None,
                             "p95_ms": round(v[min(len(v) - 1, int(0.95 * len(v)))], 1) if v else None}
            return {"answered": dict(self.answered), "reasons": dict(self.reasons),
                    "remote_failures": dict(self.failures), "latency": lat}


def _few_shot(spec: dict) -> list[dict]:
    from slmkit.evals.tasks import load_few_shot

    prefix = [{"role": "system", "content": spec["system"]}] if spec.get("system") else []
    if spec.get("few_shot"):
        path = Path(spec["few_shot"])
        if not path.is_file():
            raise SlmkitError(f"router remote: the few-shot file {path} (remote.spec.few_shot) is missing")
        prefix += load_few_shot(path)
    return prefix


class RoutedService:
    """The router, the two clients and the rules for falling back; `answer` is called from worker threads."""

    def __init__(self, doc: dict, remote_url: str, remote_model: str, local_path: Path, n_threads: int | None = None,
                 remote_timeout: float | None = None):
        cfg = RouterConfig(**doc["router"]["config"])
        self.router = make_router(cfg, doc["router"]["state"])
        self.threshold = float(doc["router"]["threshold"])
        self.validate = ValidateConfig(**doc.get("validate") or {})
        task = doc.get("task") or {}
        self.max_tokens, self.stop = int(task.get("max_tokens", 256)), list(task.get("stop") or [])
        self.embedder = None
        if cfg.kind == "classifier":
            from slmkit.pipelines.route.embed import Embedder

            self.embedder = Embedder(cfg.embedding_model, threads=n_threads, cache=False)
            self.embedder.embed(["warm-up"])  # load the model now, not on the first request
        rspec = doc["remote"]["spec"]
        self.remote_prefix = _few_shot(rspec)
        self.local = make_client(ClientSpec(kind="gguf", location=str(local_path), where="router local model",
                                            n_ctx=N_CTX["serve"], n_threads=n_threads))
        self.remote = make_client(ClientSpec(kind="openai", location=remote_url, model=remote_model,
                                             api=rspec.get("api", "chat"), where="router remote",
                                             timeout=remote_timeout or float(rspec.get("timeout", 120)),
                                             api_key_env=rspec.get("api_key_env")), NO_RETRY)
        self.kind = cfg.kind
        self.stats = PathStats()
        v = self.validate
        # A local answer can go out as it is made only when nothing may replace it: the router decides before
        # generating and no check of the whole answer is configured (an empty answer is all that goes unchecked).
        self.streams_through = not self.router.after_local and not (v.json_parse or v.json_schema or v.regex
                                                                    or v.max_chars)

    def close(self) -> None:
        self.local.close()
        self.remote.close()

    def _ask_local(self, messages: list[dict], req: dict) -> tuple[Completion, bool]:
        c = self.local.complete(Request(messages=messages, max_tokens=req["max_tokens"], stop=req["stop"],
                                        temperature=req["temperature"], logprobs=1 if self.router.after_local else None))
        return c, check(c.text, self.validate) is None

    def _ask_remote(self, messages: list[dict], req: dict) -> Completion:
        c = self.remote.complete(Request(messages=[*self.remote_prefix, *messages], max_tokens=req["max_tokens"],
                                         stop=req["stop"], temperature=req["temperature"]))
        if not c.text.strip():  # an empty body is garbage, not an answer
            raise RequestError("the remote's answer was empty")
        return c

    def _first_decision(self, text: str, metadata: dict) -> tuple[bool, str, float | None]:
        """rules / classifier: remote?, why, score."""
        if isinstance(self.router, RulesRouter):
            path, why = self.router.route(text, metadata)
            return path == "remote", why, None
        score = float(self.router.scores([{"text": text, "metadata": metadata}], self.embedder)[0])
        remote = score > self.threshold
        return remote, f"classifier p(remote better)={score:.3f} {'>' if remote else '<='} {self.threshold:.3f}", score

    def decide_first(self, messages: list[dict], metadata: dict) -> tuple[bool, str, float | None]:
        return self._first_decision(_request_text(messages), metadata)

    def stream_local(self, messages: list[dict], req: dict, on_text, why: str, score: float | None) -> Decision:
        c = self.local.complete(Request(messages=messages, max_tokens=req["max_tokens"], stop=req["stop"],
                                        temperature=req["temperature"], stream=True, on_text=on_text))
        return Decision("local", why, c, score, ["local"])

    def answer(self, messages: list[dict], req: dict, metadata: dict,
               first: tuple[bool, str, float | None] | None = None) -> tuple[Decision, list[str]]:
        text = _request_text(messages)
        failures: list[str] = []

        def remote_or(fallback: Completion | None, why: str, score: float | None, tried: list[str]) -> Decision:
            try:
                return Decision("remote", why, self._ask_remote(messages, req), score, [*tried, "remote"])
            except (RequestError, SlmkitError) as exc:
                kind = getattr(exc, "kind", type(exc).__name__)
                failures.append(kind)
                log.warning("router: the remote failed (%s: %s); answering locally", kind, str(exc)[:300])
                local = fallback or self._ask_local(messages, req)[0]
                return Decision("local", f"remote failed ({kind}: {str(exc)[:120]}): local answer kept; {why}", local, score,
                                [*tried, "remote", *([] if fallback else ["local"])])

        if self.router.after_local:  # cascade
            local, valid = self._ask_local(messages, req)
            feats = signals.features(valid, signals.token_logprobs(local.logprobs))
            score = float(self.router.scores([{"signals": feats}])[0])
            if not valid:
                return remote_or(local, f"escalated: the local answer fails validation "
                                        f"({check(local.text, self.validate)})", score, ["local"]), failures
            if score > self.threshold:
                return remote_or(local, f"escalated: p(remote better)={score:.3f} > {self.threshold:.3f}", score,
                                 ["local"]), failures
            return Decision("local", f"confident: p(remote better)={score:.3f} <= {self.threshold:.3f}", local, score,
                            ["local"]), failures
        remote, why, score = first or self._first_decision(text, metadata)
        if remote:
            return remote_or(None, why, score, []), failures
        local, valid = self._ask_local(messages, req)
        if not valid:
            return remote_or(local, f"escalated: the local answer fails validation "
                                    f"({check(local.text, self.validate)}); {why}", score, ["local"]), failures
        return Decision("local", why, local, score, ["local"]), failures


def _request_text(messages: list[dict]) -> str:
    """What routers read: the last user message (the request as route's traffic holds it)."""
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"
                 and isinstance(m.get("content"), str)), "")


def resolve_remote(doc: dict, remote_url: str | None, stack: contextlib.ExitStack,
                   n_threads: int | None) -> tuple[str, str]:
    """The remote's base URL and model: given, in router.json, or the recipe's local stand-in served again."""
    spec = doc["remote"]["spec"]
    if remote_url:
        return remote_url, spec.get("model") or "default"
    if spec.get("base_url"):
        return spec["base_url"], spec["model"]
    if spec.get("serve"):
        from slmkit.pipelines.serving.local_endpoint import local_endpoint

        url, model_id = stack.enter_context(local_endpoint(spec["serve"], delay_ms=int(spec.get("delay_ms", 0)),
                                                           n_threads=n_threads))
        return url, spec.get("model") or model_id
    raise SlmkitError("router remote: router.json names no base_url or served model; give --remote-url")


def check_local(doc: dict, local: Path | None, where: Path) -> Path:
    """The local GGUF, which must be the one the router was fitted on (same bytes)."""
    path = Path(local or doc["local"].get("location") or "")
    if not path.is_file():
        raise SlmkitError(f"{where}: the local model {path} is missing; give --local FILE (the GGUF the router "
                          "was fitted on)")
    want = doc["local"].get("sha256")
    if want and file_digest(path) != want:
        raise SlmkitError(f"{where}: {path} is not the model this router was fitted on (sha256 differs): a router "
                          f"fitted for another model would route by another model's confidence; refit with "
                          f"`slmkit run RECIPE` (route stage)")
    return path


def _stream_through(service: RoutedService, messages: list[dict], gen: dict, first: tuple, chunk, route_of, usage_of,
                    started: float):
    """A local answer streamed as the model makes it: pieces go from the generating thread to the response
    through a queue, so the client's first token comes when the model's does."""
    import asyncio

    from fastapi.responses import StreamingResponse

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    _, why, score = first

    def work() -> None:
        try:
            d = service.stream_local(messages, gen, lambda piece: loop.call_soon_threadsafe(queue.put_nowait,
                                                                                           ("piece", piece)),
                                     why, score)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", d))
        except Exception as exc:  # noqa: BLE001 - reported to the client in the stream
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        task = loop.run_in_executor(None, work)
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps(error_body(f'the local model failed: {value}', type='server_error'))}\n\n".encode()
                break
            else:
                route = route_of(value)
                service.stats.record(value, route["latency_ms"], [])
                yield chunk({}, value.completion.finish_reason or "stop")
                yield chunk(None, usage=usage_of(value.completion), slmkit_route=route)
                break
        await task
        yield b"data: [DONE]\n\n"

    from slmkit.pipelines.serving.requests import error_body

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"X-Slmkit-Route": "local", "X-Slmkit-Route-Reason": why[:200]})


def create_app(service: RoutedService, api_key: str | None = None, max_body_bytes: int = 1 << 20):
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, StreamingResponse

    from slmkit.pipelines.serving.requests import ApiError, ChatRequest, error_body, parse

    app = FastAPI(title="slmkit router", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: HttpRequest, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    def check_key(request: HttpRequest) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "router": service.kind}

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "slmkit"}]}

    @app.get("/v1/route/stats")
    async def stats(request: HttpRequest):
        check_key(request)
        return service.stats.snapshot()

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        check_key(request)
        body = await request.body()
        if len(body) > max_body_bytes:
            raise ApiError(413, f"the request body is over {max_body_bytes} bytes", code="request_too_large")
        req = parse(body, ChatRequest)
        metadata = json.loads(body).get("metadata") or {}
        messages = [m.for_template() for m in req.messages]
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or service.stop)
        gen = {"max_tokens": req.max_completion_tokens or req.max_tokens or service.max_tokens, "stop": stop,
               "temperature": req.temperature if req.temperature is not None else 0.0}
        metadata = metadata if isinstance(metadata, dict) else {}
        started = time.perf_counter()
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID}

        def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

        def route_of(d: Decision) -> dict:
            total_ms = (time.perf_counter() - started) * 1000
            return {"answered_by": d.answered_by, "reason": d.reason, "router": service.kind, "score": d.score,
                    "threshold": service.threshold, "tried": d.tried, "latency_ms": round(total_ms, 1)}

        def usage_of(c: Completion) -> dict:
            return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                    "total_tokens": c.prompt_tokens + c.completion_tokens}

        first = None
        if req.stream and service.streams_through:
            first = await run_in_threadpool(service.decide_first, messages, metadata)
            if not first[0]:
                return _stream_through(service, messages, gen, first, chunk, route_of, usage_of, started)
        try:
            decision, failures = await run_in_threadpool(service.answer, messages, gen, metadata, first)
        except (RequestError, SlmkitError) as exc:
            return JSONResponse(error_body(f"both paths failed: {exc}", type="server_error"), status_code=502)
        route = route_of(decision)
        service.stats.record(decision, route["latency_ms"], failures)
        c = decision.completion
        headers = {"X-Slmkit-Route": decision.answered_by, "X-Slmkit-Route-Reason": decision.reason[:200]}
        finish = c.finish_reason or "stop"
        if not req.stream:
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": MODEL_ID,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                                              "finish_reason": finish}],
                                 "usage": usage_of(c), "slmkit_route": route}, headers=headers)

        def events() -> Iterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            yield chunk({"content": c.text})
            yield chunk({}, finish)
            yield chunk(None, usage=usage_of(c), slmkit_route=route)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.exception_handler(404)
    async def _missing(request: HttpRequest, _exc):
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}"), status_code=404)

    return app


def serve_router(router_file: Path, port: int, host: str = "127.0.0.1", local: Path | None = None,
                 remote_url: str | None = None, n_threads: int | None = None, api_key_env: str | None = None,
                 ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (or `stop` is set). Binds 127.0.0.1 by default."""
    import uvicorn

    from slmkit.pipelines.serving.server import bind

    doc = load_router(router_file)
    local_path = check_local(doc, local, router_file)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise SlmkitError(f"--api-key-env {api_key_env}: that environment variable is not set")
    sock = bind(host, port)
    with contextlib.ExitStack() as stack:
        url, model = resolve_remote(doc, remote_url, stack, n_threads)
        service = RoutedService(doc, url, model, local_path, n_threads)
        stack.callback(service.close)
        config = uvicorn.Config(create_app(service, api_key), log_config=None, log_level="warning",
                                access_log=False, lifespan="off", ws="none")
        server = uvicorn.Server(config)
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True).start()
        print(f"slmkit router ({service.kind}) on http://{host}:{sock.getsockname()[1]}/v1 — local {local_path.name}, "
              f"remote {url}", flush=True)
        if ready is not None:
            ready.set()
        server.run(sockets=[sock])
