"""distill's teacher: its config, and `ask(messages, params) -> Answer` over the model client of its `kind` (an
OpenAI-compatible endpoint, a local transformers model or a local GGUF model; see pipelines/backends).

Callers run it on a thread pool of `concurrency` workers (HTTP teachers gain from it; local ones take 1 since
they already use every core). A teacher retries (backoff with jitter, Retry-After as a floor): its answers are
paid for, and distill reports every failed attempt by kind.
"""

from __future__ import annotations

__all__ = ["Answer", "Interrupted", "RetryableError", "TeacherConfig", "TeacherSpec", "completion_prompt",
           "make_teacher", "parse_spec"]

import threading
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from slmkit.pipelines import backends
from slmkit.pipelines.backends import (
    ClientSpec,
    Completion,
    Interrupted,
    Request,
    RequestError,
    RetryableError,
    RetryPolicy,
    completion_prompt,
)
from slmkit.pipelines.backends.pool import BaseURL
from slmkit.pipelines.core import secrets
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import StrictModel


class TeacherConfig(StrictModel):
    # hide_input_in_errors: a rejected api_key_env or base_url may hold a key; no error text may quote it.
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)

    kind: Literal["openai", "hf", "gguf"]
    model: str | None = Field(None, description="model name at the endpoint, or a local path for hf/gguf "
                                                "(with `serve`: the served file's stem)")
    base_url: BaseURL | None = Field(None, description="the endpoint, or a list of endpoints of the same model "
                                                    "(a pool: requests spread over them, a dead one is skipped)")
    serve: str | None = Field(None, description="openai only: serve this GGUF file, known model (its F16 export) "
                                                "or NAME:shipped (the GGUF its package ships) on loopback for the "
                                                "stage instead of calling base_url")
    delay_ms: int = Field(0, ge=0, description="with `serve`: added latency per request (a network stand-in)")
    serve_threads: int | None = Field(None, gt=0, description="with `serve`: llama.cpp threads (default: all cores)")
    api_key_env: secrets.EnvVarName | None = Field(None, description="openai: the environment variable holding the endpoint's key, "
                                                      "sent as a Bearer token (unset: no key is sent)")
    api: Literal["chat", "completions"] = "chat"
    price_input_per_1m: float | None = Field(None, ge=0)
    price_output_per_1m: float | None = Field(None, ge=0)
    concurrency: int = Field(4, ge=1, le=256)
    per_endpoint_concurrency: int | None = Field(None, ge=1, le=256, description="a pool: requests in flight at "
                                                 "one endpoint at most (default: `concurrency`)")
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


def parse_spec(spec: str | dict | TeacherConfig) -> TeacherConfig:
    """`openai:MODEL@BASE_URL`, `hf:PATH`, `gguf:PATH` (see backends.spec), or a mapping with `kind`.

    The openai shorthand sends no key: an endpoint that needs one takes the mapping form with `api_key_env`
    (`{kind: openai, model: …, base_url: …, api_key_env: OPENAI_API_KEY}`)."""
    if isinstance(spec, TeacherConfig):
        return spec
    if isinstance(spec, dict):
        return TeacherConfig.model_validate(spec)
    try:
        parts = backends.parse_spec(spec)
    except ValueError as exc:
        raise SlmkitError(f"distill.teacher: {exc}") from None
    if parts.kind == "openai":
        problem = secrets.url_problem(parts.base_url)
        if problem:
            raise SlmkitError(f"distill.teacher: {problem}")
        return TeacherConfig(kind="openai", model=parts.model, base_url=parts.base_url)
    local = 1  # local models use every core already
    return TeacherConfig(kind=parts.kind, model=parts.path or parts.model, concurrency=local)


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


Answer = Completion  # what a teacher gives back: text, token counts, attempts and the kinds of failed ones


def client_spec(cfg: TeacherConfig, n_threads: int | None = None) -> ClientSpec:
    return ClientSpec(kind=cfg.kind, location=(cfg.base_url or "") if cfg.kind == "openai" else str(cfg.model),
                      model=cfg.model, api=cfg.api, where="distill.teacher", n_ctx=TEACHER_N_CTX,
                      n_threads=n_threads, timeout=cfg.timeout, api_key_env=cfg.api_key_env,
                      max_connections=cfg.concurrency * 2,
                      per_endpoint=cfg.per_endpoint_concurrency or cfg.concurrency)


def retry_policy(cfg: TeacherConfig) -> RetryPolicy:
    """A paid answer is worth waiting for: the teacher retries what may succeed when sent again."""
    return RetryPolicy(retries=cfg.retries, backoff=cfg.backoff, max_wait=cfg.max_retry_wait)


class Teacher:
    """`ask(messages, params)`: distill's sampling parameters (temperature, max_tokens, seed, stop) as one plain
    request to the teacher's client. A request the endpoint refuses for a reason other than load (a 400: the
    request itself is wrong) fails the stage, as every prompt would be refused the same way."""

    def __init__(self, cfg: TeacherConfig, stop: threading.Event | None = None, n_threads: int | None = None):
        self.cfg = cfg
        self.client = backends.make_client(client_spec(cfg, n_threads), retry_policy(cfg), stop)

    def ask(self, messages: list[dict], params: dict) -> Answer:
        req = Request(messages=messages, max_tokens=int(params.get("max_tokens", 256)),
                      temperature=float(params.get("temperature", 0.0)), top_p=params.get("top_p"),
                      seed=params.get("seed"), stop=list(params.get("stop") or []), stream=False)
        try:
            return self.client.complete(req)
        except RetryableError:
            raise
        except RequestError as exc:
            raise SlmkitError(f"teacher {self.cfg.base_url or self.cfg.model}: {exc}") from None

    def close(self) -> None:
        self.client.close()


TEACHER_N_CTX = N_CTX["teacher"]  # see core/defaults.py


def make_teacher(cfg: TeacherConfig, stop: threading.Event | None = None, n_threads: int | None = None) -> Teacher:
    """`stop` reaches the HTTP teacher (no new request, no retry wait once set); a local teacher answers one
    request at a time in-process, and the caller checks `stop` between requests. `n_threads`: a local teacher's
    CPU threads (default: every core this process may use)."""
    return Teacher(cfg, stop, n_threads)
