"""Any OpenAI-compatible endpoint, through the official `openai` SDK (typed errors, timeouts, streaming).

Two choices differ from the SDK's defaults, on purpose:
- Retries are slmkit's (`RetryPolicy`), not the SDK's (`max_retries=0`): distill counts every failed attempt
  by kind in its report and must stop waiting the moment Ctrl-C arrives, and the SDK's own loop neither shows
  its attempts nor can be interrupted; bench must not retry at all (a retried request reports two requests'
  time as one).
- Credentials come only from the variable the config names. Asked for none, the SDK falls back to
  OPENAI_API_KEY, OPENAI_ORG_ID and OPENAI_PROJECT_ID, and would send a user's OpenAI key to whatever endpoint a
  recipe names (a loopback teacher, a third party's server). So the key is always passed explicitly, and the
  Authorization, OpenAI-Organization and OpenAI-Project headers are omitted from every request that has no key
  of its own (tests/test_backends.py sets those variables and checks what reaches the server).

The clock runs on the client: a streamed request's time to first token includes the network, as a user feels it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from slmkit.pipelines.backends.base import (
    ClientSpec,
    Completion,
    Request,
    RequestError,
    RetryableError,
    completion_prompt,
)
from slmkit.pipelines.backends.registry import register
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy, retry_after
from slmkit.pipelines.core import secrets
from slmkit.pipelines.core.errors import SlmkitError

# Statuses worth sending again: the server was busy, timed out or broke, not the request.
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# A failure below HTTP (the SDK's APIConnectionError wraps it), by the transport's exception class, as reports
# count it.
TRANSPORT_KINDS = {
    "ConnectError": "connect_error",
    "RemoteProtocolError": "connection_closed",  # the server hung up without a (complete) answer
    "ReadError": "connection_reset",
    "WriteError": "connection_reset",
}


def _transport_kind(exc: BaseException | None) -> str:
    if exc is None:
        return "transport_error"
    kind = TRANSPORT_KINDS.get(type(exc).__name__, "transport_error")
    if kind == "connect_error" and "refused" in str(exc).lower():
        return "connection_refused"
    return kind


class TokenCounter:
    """Counts an endpoint's tokens when it reports no usage: a named tokenizer, else chars/4 (an estimate)."""

    def __init__(self, spec: str | None):
        self.source = "estimate"
        self._count = lambda text: (len(text) + 3) // 4
        if not spec:
            return
        if spec.endswith(".gguf"):
            from slmkit.pipelines.backends.llama_adapter import open_llama

            llm = open_llama(spec, n_ctx=0, vocab_only=True, what="tokenizer")
            self._count = lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        else:
            from transformers import AutoTokenizer

            from slmkit.pipelines.core.models import resolve

            tok = AutoTokenizer.from_pretrained(resolve(spec))
            self._count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
        self.source = "tokenizer"

    def __call__(self, text: str) -> int:
        return self._count(text) if text else 0


# Per api: the SDK resource, how the chat goes in, and the text of one choice (whole, or a streamed delta).
_APIS = {
    "chat": (lambda c: c.chat.completions, lambda msgs: {"messages": msgs},
             lambda ch: (ch.get("message") or {}).get("content"), lambda ch: (ch.delta.content or "")),
    "completions": (lambda c: c.completions, lambda msgs: {"prompt": completion_prompt(msgs)},
                    lambda ch: ch.get("text"), lambda ch: (ch.text or "")),
}


@register("openai")
class OpenAIClient:
    def __init__(self, spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None):
        import httpx2
        import openai

        if not spec.location:
            raise SlmkitError(f"{spec.where}.base_url: an openai endpoint needs base_url")
        self.spec, self.policy, self.stop = spec, policy, stop or threading.Event()
        self._sdk, self._transport_errors = openai, (httpx2.TransportError,)
        # Only the variable this config names is read, here; the key lives in the SDK client, never in a
        # config, a result or a log.
        key = secrets.key_for(spec.api_key_env, spec.location, f"{spec.where}.api_key_env")
        omit = openai.Omit()
        self._headers = {"OpenAI-Organization": omit, "OpenAI-Project": omit}
        if not key:
            self._headers["Authorization"] = omit
        limits = httpx2.Limits(max_connections=spec.max_connections) if spec.max_connections else None
        self.client = openai.OpenAI(
            # Empty, not None: None would make the SDK read its environment variables.
            api_key=key or "", admin_api_key="", organization="", project="", webhook_secret="",
            base_url=spec.location, timeout=spec.timeout,
            max_retries=0, http_client=httpx2.Client(limits=limits) if limits else None)
        self.counter = TokenCounter(spec.tokenizer)

    def count(self, text: str) -> int:
        return self.counter(text)

    def _body(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.spec.model, **_APIS[self.spec.api][1](req.messages),
                                "max_tokens": req.max_tokens, "temperature": req.temperature}
        for name in ("top_p", "seed", "frequency_penalty"):
            if getattr(req, name) is not None:
                body[name] = getattr(req, name)
        if req.stop:
            body["stop"] = req.stop
        if req.logprobs:
            body |= ({"logprobs": True, "top_logprobs": req.logprobs} if self.spec.api == "chat"
                     else {"logprobs": req.logprobs})
        if req.json_schema is not None:
            body["extra_body"] = schema_fields(req.json_schema, self.spec.api)
        return body

    def complete(self, request: Request) -> Completion:
        once = self._streamed if request.stream else self._plain
        return self.policy.call(lambda: once(request), self.stop)

    # -- errors ------------------------------------------------------------------------------------------
    def _raise_for(self, exc: Exception) -> None:
        """The SDK's or the transport's exception as slmkit's: retryable, fatal (a config problem), or this
        request's failure."""
        sdk, where, url = self._sdk, self.spec.where, self.spec.location
        if isinstance(exc, sdk.APITimeoutError):
            raise RetryableError(f"timeout after {self.spec.timeout:g} s", kind="timeout") from None
        if isinstance(exc, sdk.APIConnectionError):
            cause = exc.__cause__
            raise RetryableError(f"{type(cause).__name__ if cause else 'connection'}: {cause or exc}",
                                 kind=_transport_kind(cause)) from None
        if isinstance(exc, self._transport_errors):  # raised while reading a body the SDK handed over
            raise RetryableError(f"{type(exc).__name__}: {exc}", kind=_transport_kind(exc)) from None
        if isinstance(exc, sdk.APIStatusError):
            status, text = exc.status_code, exc.response.text[:300]
            if status in (401, 403):
                var = self.spec.api_key_env or "(no api_key_env set)"
                raise SlmkitError(f"{where}: {url} refused the API key (HTTP {status}); check the environment "
                                  f"variable {var}") from None
            if status == 404:
                raise SlmkitError(f"{where}: {url}: model '{self.spec.model}' or its {self.spec.api} route not "
                                  f"found (HTTP 404): {text[:200]}") from None
            if status in RETRY_STATUS:
                raise RetryableError(f"HTTP {status}", retry_after(exc.response.headers),
                                     kind=f"http_{status}") from None
            raise RequestError(f"HTTP {status}: {text}") from None
        if isinstance(exc, sdk.APIError):  # an error event inside a stream
            raise RequestError(f"error event: {str(exc)[:200]}") from None
        raise exc

    # -- one attempt -------------------------------------------------------------------------------------
    def _plain(self, req: Request) -> Completion:
        """One JSON answer; a body that is not one is retryable (the answer was lost on the way)."""
        resource, _, text_of, _ = _APIS[self.spec.api]
        start = time.perf_counter()
        try:
            raw = resource(self.client).with_raw_response.create(**self._body(req), extra_headers=self._headers)
            body = raw.http_response.read()
        except Exception as exc:  # noqa: BLE001 - every exception is mapped or re-raised by _raise_for
            self._raise_for(exc)
        end = time.perf_counter()
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = text_of(choice)
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RetryableError(f"malformed response: {exc}", kind="malformed_body") from None
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens, source = usage.get("prompt_tokens"), usage.get("completion_tokens"), "usage"
        if completion_tokens is None:
            prompt_tokens, completion_tokens = self.counter(self._sent(req)), self.counter(text)
            source = self.counter.source
        return Completion(text, int(prompt_tokens or 0), int(completion_tokens), None, end - start, source,
                          choice.get("finish_reason"), _logprobs(choice))

    def _streamed(self, req: Request) -> Completion:
        """Server-sent events; the answer is complete only when a choice says why it finished."""
        resource, _, _, piece_of = _APIS[self.spec.api]
        parts: list[str] = []
        usage, first, finish = None, None, None
        start = time.perf_counter()
        try:
            stream = resource(self.client).create(**self._body(req), stream=True, extra_headers=self._headers,
                                                  stream_options={"include_usage": True})
            with stream:
                for event in stream:
                    usage = event.usage or usage
                    for choice in event.choices or []:
                        piece = piece_of(choice)
                        if piece:
                            first = first or time.perf_counter()
                            parts.append(piece)
                        finish = finish or choice.finish_reason
        except json.JSONDecodeError as exc:
            raise RequestError(f"malformed event: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every exception is mapped or re-raised by _raise_for
            self._raise_for(exc)
        end = time.perf_counter()
        if not finish:
            raise RequestError("the stream ended before the answer did (no finish_reason)")
        text = "".join(parts)
        if usage is not None and usage.completion_tokens is not None:
            prompt_tokens, completion_tokens, source = int(usage.prompt_tokens or 0), int(usage.completion_tokens), \
                "usage"
        else:
            prompt_tokens, completion_tokens = self.counter(self._sent(req)), self.counter(text)
            source = self.counter.source
        return Completion(text, prompt_tokens, completion_tokens, None if first is None else first - start,
                          end - start, source, finish)

    def _sent(self, req: Request) -> str:
        body = _APIS[self.spec.api][1](req.messages)
        return body.get("prompt") or "\n".join(m["content"] for m in body["messages"])

    def close(self) -> None:
        self.client.close()


def strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict structured outputs take this schema: every object lists all its properties as
    required and forbids others. Strict is asked for only then; a schema with optional arguments (most tools')
    would be refused with HTTP 400 in strict mode, and is still sent, non-strict."""
    if isinstance(schema, list):
        return all(strict_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(props):
            return False
    return all(strict_ok(v) for k, v in schema.items() if k not in ("enum", "const", "default", "examples"))


def schema_fields(schema: dict, api: str) -> dict[str, Any]:
    """The body fields that ask an endpoint for JSON under `schema`: OpenAI's `response_format` (taken by
    OpenAI, vLLM, llama.cpp's server and slmkit serve on chat; by vLLM and slmkit serve on completions), and for
    completions also llama.cpp server's own `json_schema` field. Sent through the SDK's extra_body, since its
    completions call has no response_format parameter."""
    fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": strict_ok(schema)}}
    return {"response_format": fmt} | ({"json_schema": schema} if api == "completions" else {})


def _logprobs(choice: dict) -> list[dict[str, float]] | None:
    """Top log-probabilities per token from a chat (`logprobs.content`) or completions (`top_logprobs`) choice."""
    lp = choice.get("logprobs")
    if not lp:
        return None
    if isinstance(lp.get("content"), list):
        return [{t["token"]: t["logprob"] for t in tok.get("top_logprobs") or []} for tok in lp["content"]]
    return [dict(d) for d in lp.get("top_logprobs") or []] or None
