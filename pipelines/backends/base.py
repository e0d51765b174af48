"""What every model client takes and gives back, whatever it talks to.

A client answers `complete(Request) -> Completion`. The request is always a chat (a list of messages); a client
whose `api` is `completions` sends it as one text (`completion_prompt`), as a base model without a chat template
needs. A completion carries its text, token counts (and where they came from), the time of the first token and
of the whole answer, and how many attempts it took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Api = Literal["chat", "completions"]


def completion_prompt(messages: list[dict]) -> str:
    """A chat as one text for a completions route (a base model without a chat template): turns separated by
    blank lines, ending with one so that the model writes the next turn, the answer."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


@dataclass
class Request:
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    # OpenAI's: each token's logit lowered by this much per time it has appeared in the answer so far (llama.cpp:
    # in the last 64 tokens); what stops a small model's text repeating itself until max_tokens cuts it.
    frequency_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    # Streamed: the client watches the answer arrive, so `ttft_s` is the time of the first piece of text. Not
    # streamed: one plain answer (what a paid teacher call wants: one body, retried whole if it comes back broken).
    stream: bool = False
    logprobs: int | None = None  # top-k log-probabilities per generated token, where the backend has them
    # Streamed: called with each piece of text as it arrives (a server passing an answer through as it is made).
    on_text: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    # The answer is one JSON value valid under this JSON Schema, where the backend can enforce it (gguf: a
    # llama.cpp grammar; an endpoint: `response_format`). Callers still validate: a server may ignore it, and
    # an answer cut by max_tokens is valid JSON's prefix only.
    json_schema: dict | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None = None  # None when not streamed, or when no text came at all
    e2e_s: float = 0.0
    token_source: str = "usage"  # usage (the backend's count) | tokenizer | estimate (chars/4)
    finish_reason: str | None = None
    logprobs: list[dict[str, float]] | None = None  # per generated token: token text -> log-probability
    requests: int = 1  # attempts it took (retries included)
    retried: list[str] = field(default_factory=list)  # the kind of each failed attempt before this answer


@dataclass
class ClientSpec:
    """Where a client connects and how; built by each caller from its own config. No key inside: only the
    name of the variable that holds it, read by the client when it connects."""

    kind: str
    location: str | list[str]  # gguf file, hf folder or id, an endpoint's base URL, or a pool's URLs
    model: str | None = None  # the model name at an endpoint
    api: Api = "chat"
    where: str = "model"  # how errors name this client's config, e.g. "distill.teacher"
    n_ctx: int | None = None
    n_threads: int | None = None
    prompt_cache: bool = False  # gguf: reuse every cached token of a shared prompt prefix (default: whole batches)
    from_scratch: bool = False  # gguf: prefill every prompt whole, reusing no KV at all
    timeout: float = 60.0
    api_key_env: str | None = None
    tokenizer: str | None = None  # endpoint: count tokens with this when the server reports no usage
    max_connections: int | None = None
    per_endpoint: int | None = None  # a pool: requests in flight at one endpoint at most


class Client(Protocol):
    spec: ClientSpec

    def complete(self, request: Request) -> Completion: ...

    def count(self, text: str) -> int: ...

    def close(self) -> None: ...


class RequestError(Exception):
    """This request failed and sending it again would not help (or the caller asked for no retries); the caller
    records it and goes on, or fails, as its own rules say."""


class RetryableError(RequestError):
    """A request that may succeed when sent again. `kind` names the cause for reports (http_500, http_429,
    timeout, connection_refused, connection_reset, connection_closed, malformed_body, ...); once retries are
    spent, `retried` holds the kinds of the attempts before the last."""

    def __init__(self, message: str, retry_after: float | None = None, kind: str = "request_failed",
                 retried: list[str] | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind
        self.retried = retried or []


class Interrupted(Exception):
    """The caller's stop event was set: no further request was sent (one already in flight was let finish)."""
