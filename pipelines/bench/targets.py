"""What bench measures: targets (a config each), and the client each is asked through (pipelines/backends):

  gguf    llama-cpp-python in the target's own process (its stream, so the first text's time is known)
  hf      transformers, a greedy loop over the KV cache, so the first token's time is known
  openai  any OpenAI-compatible endpoint with server-sent events; the clock runs on the client, so time to
          first token includes the network, as a user would feel it
Token counts come from a tokenizer or the server's usage, never from the number of chunks: a chunk can hold
several tokens or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from slmkit.pipelines import backends
from slmkit.pipelines.backends import NO_RETRY, ClientSpec, Request
from slmkit.pipelines.backends.pool import BaseURL
from slmkit.pipelines.backends.prefix_reuse import prefix_reuse_mode
from slmkit.pipelines.core import secrets
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.types import InputPath, StrictModel

Kind = Literal["gguf", "hf", "openai"]


class TargetConfig(StrictModel):
    # hide_input_in_errors: a rejected api_key_env or base_url may hold a key; no error text may quote it.
    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True,
                              hide_input_in_errors=True)

    label: str | None = Field(None, description="name in reports (default: derived from the spec)")
    kind: Kind
    path: InputPath | None = Field(None, description="gguf: the .gguf file; hf: the model folder")
    model: str | None = Field(None, description="openai: the model name at the endpoint; hf: a known model or HF "
                                                "id; gguf: a known model, exported once to an F16 GGUF (cached)")
    from_: str | None = Field(None, alias="from", description="STAGE.KEY: the path is that upstream output "
                                                              "(e.g. quantize.Q4_K_M, merge.model)")
    base_url: BaseURL | None = Field(None, description="openai: the endpoint, or a list of endpoints of the same "
                                                    "model (a pool)")
    per_endpoint_concurrency: int | None = Field(None, ge=1, description="a pool: requests in flight at one "
                                                 "endpoint at most (default: no cap beyond bench's own)")
    api_key_env: secrets.EnvVarName | None = Field(None, description="openai: the environment variable holding the endpoint's "
                                                      "key, sent as a Bearer token (unset: no key is sent)")
    api: Literal["chat", "completions"] = "chat"
    few_shot: InputPath | None = Field(None, description="JSONL of {prompt, response} pairs put before each prompt")
    system: str | None = None
    n_threads: int | None = Field(None, gt=0, description="local targets: CPU threads (default: all cores)")
    n_ctx: int = Field(N_CTX["bench"], gt=0, description="gguf: context length")
    prompt_cache: bool = Field(False, description="gguf: reuse every token of the prompt prefix shared with the "
                                                  "previous request, as llama.cpp servers do. Off by default (only "
                                                  "whole prefill batches are reused): a prefill of another shape "
                                                  "rounds differently, so with it the same request can get another "
                                                  "greedy answer depending on what came before")
    from_scratch: bool = Field(False, description="gguf and `serve` targets: prefill every prompt whole, reusing "
                                                  "no KV (the default reuses whole prefill batches of a prefix "
                                                  "shared with the previous request: the same answers, a lower "
                                                  "time to first token for prompts with a long shared prefix)")
    price_input_per_1m: float | None = Field(None, ge=0, description="endpoint: USD per 1M prompt tokens")
    price_output_per_1m: float | None = Field(None, ge=0, description="endpoint: USD per 1M completion tokens")
    tokenizer: str | None = Field(None, description="endpoint: count tokens with this (HF folder, known model "
                                                    "or .gguf) when the server reports no usage")
    note: str | None = Field(None, description="free text shown in reports")
    reference: str | None = Field(None, description="label of the target this one's quality retention is "
                                                    "computed against (default: the bench's baseline)")
    serve: str | None = Field(None, description="openai: serve this GGUF, known model (its F16 export) or "
                                                "NAME:shipped (the GGUF its package ships) on 127.0.0.1 for the bench")
    delay_ms: int = Field(0, ge=0, description="with serve: added latency per request (a network stand-in)")
    timeout: float = Field(120.0, gt=0, description="endpoint: seconds before a request counts as failed")

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, value: Any) -> Any:
        return parse_spec(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        prefix_reuse_mode(self.prompt_cache, self.from_scratch)  # the two exclude each other: a ValueError here
        if self.kind == "openai" and not self.serve and (self.prompt_cache or self.from_scratch):
            raise ValueError("`prompt_cache` and `from_scratch` are for gguf targets and `serve` targets (an "
                             "endpoint's server decides what it keeps)")
        if self.kind == "openai":
            if self.path is not None:
                raise ValueError("an openai target has no `path` (use `model` and `base_url` or `serve`)")
            if self.serve and self.base_url:
                raise ValueError("set either `serve` (a local server) or `base_url`, not both")
            if not self.serve and not self.base_url:
                raise ValueError("an openai target needs `base_url` (or `serve` for a local stand-in)")
            if not self.serve and not self.model:
                raise ValueError("an openai target needs `model`")
        else:
            if self.serve or self.base_url or self.delay_ms:
                raise ValueError(f"`serve`, `base_url` and `delay_ms` are for openai targets, not {self.kind}")
            given = [k for k, v in (("path", self.path), ("from", self.from_), ("model", self.model)) if v]
            if len(given) != 1:
                raise ValueError(f"a {self.kind} target needs exactly one of `path`, `from`, `model` "
                                 f"(got {', '.join(given) or 'none'})")
        if self.from_ is not None and (self.from_.count(".") != 1 or not all(self.from_.split("."))):
            raise ValueError(f"`from: {self.from_}` is not STAGE.KEY (e.g. quantize.Q4_K_M)")
        return self

    def default_label(self) -> str:
        if self.label:
            return self.label
        if self.from_:
            return self.from_.split(".")[1] if self.from_.startswith("quantize.") else self.from_
        if self.path is not None:
            return self.path.stem if self.kind == "gguf" else self.path.name
        if self.kind == "openai" and self.serve and not self.model:
            return Path(self.serve).stem
        return str(self.model)


def parse_spec(spec: str) -> dict:
    """`gguf:PATH`, `hf:PATH_OR_KNOWN_NAME`, `openai:MODEL@BASE_URL` (see backends.spec) -> the mapping form.

    The openai shorthand sends no key: an endpoint that needs one takes the mapping form with `api_key_env`."""
    parts = backends.parse_spec(spec)
    return {"kind": parts.kind, **{k: v for k, v in (("model", parts.model), ("path", parts.path),
                                                     ("base_url", parts.base_url)) if v is not None}}


@dataclass
class Target:
    """A target ready to run: paths resolved (from upstream outputs too), no secrets inside."""

    label: str
    kind: str
    location: str | list[str]  # gguf file, hf folder/id, the endpoint's base URL, or a pool's URLs
    model: str | None
    api: str
    messages_prefix: list[dict]  # system + few-shot turns
    n_threads: int | None
    n_ctx: int
    api_key_env: str | None  # the variable's name only; the key is read by the client when it connects
    tokenizer: str | None
    timeout: float
    prompt_cache: bool = False
    from_scratch: bool = False
    per_endpoint: int | None = None  # a pool: requests in flight at one endpoint at most
    logprobs: bool = False  # record each answer token's log-probability (route's confidence signals)


@dataclass
class Reply:
    text: str
    ttft_s: float | None  # None when no text came at all
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int
    token_source: str  # tokenizer | usage | estimate
    token_logprobs: list[float] | None = None  # the sampled tokens' own, when the target records them


def client_spec(target: Target) -> ClientSpec:
    return ClientSpec(kind=target.kind, location=target.location, model=target.model, api=target.api,
                      where=f"bench target '{target.label}'", n_ctx=target.n_ctx, n_threads=target.n_threads,
                      prompt_cache=target.prompt_cache, from_scratch=target.from_scratch, timeout=target.timeout,
                      api_key_env=target.api_key_env,
                      tokenizer=target.tokenizer, per_endpoint=target.per_endpoint)


class BenchClient:
    """One target's model client, asked as bench asks: the prompt after the target's system and few-shot turns,
    greedy, streamed (so the first token's time is known), and never retried: a retried request would report
    two requests' time as one, so a failure is recorded instead."""

    def __init__(self, target: Target):
        self.t = target
        self.client = backends.make_client(client_spec(target), NO_RETRY)

    def count(self, text: str) -> int:
        return self.client.count(text)

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> Reply:
        messages = [*self.t.messages_prefix, {"role": "user", "content": prompt}]
        c = self.client.complete(Request(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                         stop=list(stop or []), stream=True, logprobs=1 if self.t.logprobs else None))
        lps = [next(iter(t.values())) for t in c.logprobs if t] if c.logprobs is not None else None
        return Reply(c.text, c.ttft_s, c.e2e_s, c.prompt_tokens, c.completion_tokens, c.token_source, lps)

    def close(self) -> None:
        self.client.close()


def size_mb(target: Target) -> float | None:
    """The model's bytes on disk: the GGUF file, or an HF folder's safetensors; None for an endpoint."""
    if target.kind == "openai":
        return None
    path = Path(target.location)
    if path.is_file():
        return round(path.stat().st_size / 2**20, 2)
    if path.is_dir():
        files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
        return round(sum(f.stat().st_size for f in files) / 2**20, 2)
    return None
