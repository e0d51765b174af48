"""Teacher backends behind one interface, chosen by `kind`: an OpenAI-compatible HTTP endpoint, a local
transformers model, or a local GGUF model (llama-cpp-python).

A teacher answers `ask(messages, params) -> Answer`; callers run it on a thread pool of `concurrency` workers
(HTTP teachers gain from it; local ones take 1 since they already use every core).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from slmkit.pipelines import secrets
from slmkit.pipelines.errors import SlmkitError
from slmkit.pipelines.types import StrictModel


class TeacherConfig(StrictModel):
    # hide_input_in_errors: a rejected api_key_env or base_url may hold a key; no error text may quote it.
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)

    kind: Literal["openai", "hf", "gguf"]
    model: str | None = Field(None, description="model name at the endpoint, or a local path for hf/gguf "
                                                "(with `serve`: the served file's stem)")
    base_url: secrets.EndpointURL | None = None
    serve: str | None = Field(None, description="openai only: serve this GGUF file or known model on loopback "
                                                "for the stage instead of calling base_url")
    delay_ms: int = Field(0, ge=0, description="with `serve`: added latency per request (a network stand-in)")
    serve_threads: int | None = Field(None, gt=0, description="with `serve`: llama.cpp threads (default: all cores)")
    api_key_env: secrets.EnvVarName | None = Field(None, description="openai: the environment variable holding the endpoint's key, "
                                                      "sent as a Bearer token (unset: no key is sent)")
    api: Literal["chat", "completions"] = "chat"
    price_input_per_1m: float | None = Field(None, ge=0)
    price_output_per_1m: float | None = Field(None, ge=0)
    concurrency: int = Field(4, ge=1, le=256)
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(5, ge=0)
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles each time, with jitter")
    max_retry_wait: float = Field(60.0, ge=0, description="longest wait before a retry in seconds, whatever the "
                                                          "backoff or a server's Retry-After asks for")

    @model_validator(mode="after")
    def _where(self):
        if self.serve and self.kind != "openai":
            raise ValueError("`serve` starts an OpenAI-compatible server, so it needs kind: openai")
        if self.serve and self.base_url:
            raise ValueError("set either `serve` (a local server) or `base_url`, not both")
        if not self.model and not self.serve:
            raise ValueError("`model` is required (unless `serve` names what to serve)")
        return self


def completion_prompt(messages: list[dict]) -> str:
    """A chat as one text for a completions route (a base model without a chat template): turns separated by
    blank lines, ending with one so that the model writes the next turn, the answer."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def parse_spec(spec: str | dict | TeacherConfig) -> TeacherConfig:
    """`openai:MODEL@BASE_URL`, `hf:PATH`, `gguf:PATH`, or a mapping with `kind`.

    The openai shorthand sends no key: an endpoint that needs one takes the mapping form with `api_key_env`
    (`{kind: openai, model: …, base_url: …, api_key_env: OPENAI_API_KEY}`)."""
    if isinstance(spec, TeacherConfig):
        return spec
    if isinstance(spec, dict):
        return TeacherConfig.model_validate(spec)
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in BACKENDS or not rest:
        raise SlmkitError(f"distill.teacher: '{secrets.scrub(spec)}' is not openai:MODEL@BASE_URL, hf:PATH or "
                          "gguf:PATH")
    if kind == "openai":
        model, at, url = rest.partition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise SlmkitError(f"distill.teacher: '{secrets.scrub(spec)}' needs the form "
                              "openai:MODEL@http(s)://HOST/v1")
        problem = secrets.url_problem(url)
        if problem:
            raise SlmkitError(f"distill.teacher: {problem}")
        return TeacherConfig(kind="openai", model=model, base_url=url.rstrip("/"))
    local = 1  # local models use every core already
    return TeacherConfig(kind=kind, model=rest, concurrency=local)


def _check_spec(value: str | TeacherConfig) -> str | TeacherConfig:
    """A shorthand teacher is checked when the recipe is (the string itself is kept, as the recipe wrote it)."""
    if isinstance(value, str):
        try:
            parse_spec(value)
        except SlmkitError as exc:
            raise ValueError(str(exc).removeprefix("distill.teacher: ")) from None
    return value


def _teacher_form(value: Any) -> str:
    return "shorthand[str]" if isinstance(value, str) else "mapping[TeacherConfig]"


# The type of distill's `teacher`: a shorthand string or a mapping, both validated with the recipe. Tagged by
# form, so a bad mapping reports its own problems only (not also "Input should be a valid string"); the tags
# hold "[" so that recipe error paths leave them out, as they leave out pydantic's own union members.
TeacherSpec = Annotated[
    Annotated[str, AfterValidator(_check_spec), Tag("shorthand[str]")] | Annotated[TeacherConfig,
                                                                                  Tag("mapping[TeacherConfig]")],
    Discriminator(_teacher_form),
]


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    requests: int = 1  # HTTP attempts it took (retries included)
    retried: list[str] = field(default_factory=list)  # the kind of each failed attempt before this answer


class RetryableError(Exception):
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


# ---------------------------------------------------------------- openai-compatible HTTP

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def retry_delay(cfg: TeacherConfig, attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number `attempt + 1`: exponential backoff with jitter, at least a server's
    Retry-After, at most `max_retry_wait` (a server asking for a day must not park a worker for a day)."""
    delay = cfg.backoff * (2 ** attempt) * (0.5 + random.random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cfg.max_retry_wait)


def _transport_kind(exc: Exception) -> str:
    """The kind of a failure below HTTP, as reports count it."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connection_refused" if "refused" in str(exc).lower() else "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection_closed"  # the server hung up without a (complete) answer
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "connection_reset"
    return "transport_error"


class OpenAITeacher:
    """`stop`, once set, sends no further request and cuts retry waits short (a request in flight finishes)."""

    def __init__(self, cfg: TeacherConfig, stop: threading.Event | None = None):
        import httpx

        self.cfg = cfg
        self.stop = stop or threading.Event()
        if not cfg.base_url:
            raise SlmkitError("distill.teacher.base_url: an openai teacher needs base_url")
        headers = {}
        key = secrets.key_for(cfg.api_key_env, cfg.base_url, "distill.teacher.api_key_env")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=cfg.base_url, headers=headers, timeout=cfg.timeout,
                                   limits=httpx.Limits(max_connections=cfg.concurrency * 2))

    def _once(self, messages: list[dict], params: dict) -> Answer:
        import httpx

        body: dict[str, Any] = {"model": self.cfg.model, **params}
        if self.cfg.api == "chat":
            route, body["messages"] = "/chat/completions", messages
        else:
            route, body["prompt"] = "/completions", completion_prompt(messages)
        try:
            resp = self.client.post(route, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}", kind=_transport_kind(exc)) from None
        if resp.status_code in (401, 403):
            var = self.cfg.api_key_env or "(no api_key_env set)"
            raise SlmkitError(f"teacher {self.cfg.base_url} refused the API key (HTTP {resp.status_code}); "
                              f"check the environment variable {var}")
        if resp.status_code in RETRY_STATUS:
            raise RetryableError(f"HTTP {resp.status_code}", _retry_after(resp.headers),
                                 kind=f"http_{resp.status_code}")
        if resp.status_code == 404:
            raise SlmkitError(f"teacher {self.cfg.base_url}: model '{self.cfg.model}' or route {route} not found "
                              f"(HTTP 404): {resp.text[:200]}")
        if resp.status_code >= 400:
            raise SlmkitError(f"teacher {self.cfg.base_url}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.cfg.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RetryableError(f"malformed response: {exc}", kind="malformed_body") from None
        usage = data.get("usage") or {}
        return Answer(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    def ask(self, messages: list[dict], params: dict) -> Answer:
        retried: list[str] = []
        for attempt in range(self.cfg.retries + 1):
            if self.stop.is_set():  # checked before every attempt: an interrupted caller pays for nothing new
                raise Interrupted("stopped before the request was sent")
            try:
                ans = self._once(messages, params)
            except RetryableError as exc:
                if attempt == self.cfg.retries:
                    raise RetryableError(f"gave up after {attempt + 1} attempts: {exc}", kind=exc.kind,
                                         retried=retried) from None
                retried.append(exc.kind)
                # An Event wait, not time.sleep: setting `stop` ends the wait at once.
                if self.stop.wait(retry_delay(self.cfg, attempt, exc.retry_after)):
                    raise Interrupted("stopped while waiting to retry") from None
                continue
            ans.requests, ans.retried = attempt + 1, retried
            return ans
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------- local models

class HFTeacher:
    def __init__(self, cfg: TeacherConfig):
        import threading

        from slmkit.pipelines.models import resolve
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        path = resolve(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.model.eval()
        self._lock = threading.Lock()

    def ask(self, messages: list[dict], params: dict) -> Answer:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        temp = float(params.get("temperature", 0.0))
        gen = {"max_new_tokens": int(params.get("max_tokens", 256)), "do_sample": temp > 0}
        if temp > 0:
            gen["temperature"] = temp
        with self._lock, torch.no_grad():
            if "seed" in params:
                torch.manual_seed(int(params["seed"]))
            out = self.model.generate(**ids, **gen, pad_token_id=self.tokenizer.pad_token_id
                                      or self.tokenizer.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Answer(text, int(ids["input_ids"].shape[1]), int(len(new)))

    def close(self) -> None:
        pass


class GGUFTeacher:
    """`n_threads`: llama.cpp threads, every core by default (on a machine shared with other work, fewer threads
    than cores can be several times faster: llama.cpp's threads spin while they wait for each other)."""

    def __init__(self, cfg: TeacherConfig, n_threads: int | None = None):
        from llama_cpp import Llama

        if not Path(cfg.model).is_file():
            raise SlmkitError(f"distill.teacher: no GGUF file at {cfg.model}")
        self.cfg = cfg
        self.llm = Llama(model_path=cfg.model, n_ctx=2048, n_threads=n_threads or os.cpu_count() or 1,
                         verbose=False)
        self._lock = threading.Lock()

    def ask(self, messages: list[dict], params: dict) -> Answer:
        kw = {k: params[k] for k in ("max_tokens", "temperature", "top_p", "seed", "stop") if k in params}
        with self._lock:
            # llama.cpp would keep the previous prompt's KV cache and evaluate only what follows the common
            # prefix; that prefill of another batch shape rounds differently, and greedy decoding follows the
            # difference. Prefilled from scratch, the same request gets the same answer whatever came before.
            self.llm.reset()
            out = self.llm.create_chat_completion(messages=messages, **kw)
        usage = out.get("usage") or {}
        return Answer(out["choices"][0]["message"]["content"] or "", int(usage.get("prompt_tokens", 0)),
                      int(usage.get("completion_tokens", 0)))

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None


BACKENDS = {"openai": OpenAITeacher, "hf": HFTeacher, "gguf": GGUFTeacher}


def make_teacher(cfg: TeacherConfig, stop: threading.Event | None = None):
    """`stop` reaches the HTTP teacher (no new request, no retry wait once set); a local teacher answers one
    request at a time in-process, and the caller checks `stop` between requests."""
    if cfg.kind == "openai":
        return OpenAITeacher(cfg, stop)
    return BACKENDS[cfg.kind](cfg)
