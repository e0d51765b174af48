"""What bench measures: targets (a config each) and one backend per kind, in a table.

A backend answers one request at a time, streaming, and says when the first piece of text arrived:
  gguf    llama-cpp-python in this process (create_chat_completion / create_completion, stream=True)
  hf      transformers, a greedy loop over the KV cache, so the first token's time is known
  openai  any OpenAI-compatible endpoint over HTTP with server-sent events; the clock runs on the client, so
          time to first token includes the network, as a user would feel it
Token counts come from a tokenizer, never from the number of chunks: a chunk can hold several tokens or none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from slmkit.pipelines import secrets
from slmkit.pipelines.threads import usable_cores
from slmkit.pipelines.types import InputPath, StrictModel

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
    base_url: secrets.EndpointURL | None = None
    api_key_env: secrets.EnvVarName | None = Field(None, description="openai: the environment variable holding the endpoint's "
                                                      "key, sent as a Bearer token (unset: no key is sent)")
    api: Literal["chat", "completions"] = "chat"
    few_shot: InputPath | None = Field(None, description="JSONL of {prompt, response} pairs put before each prompt")
    system: str | None = None
    n_threads: int | None = Field(None, gt=0, description="local targets: CPU threads (default: all cores)")
    n_ctx: int = Field(4096, gt=0, description="gguf: context length")
    prompt_cache: bool = Field(False, description="gguf: reuse the KV of the prompt prefix shared with the previous "
                                                  "request, as llama.cpp servers do. Off by default: a prefill of "
                                                  "another shape rounds differently, so with it the same request "
                                                  "can get another greedy answer depending on what came before")
    price_input_per_1m: float | None = Field(None, ge=0, description="endpoint: USD per 1M prompt tokens")
    price_output_per_1m: float | None = Field(None, ge=0, description="endpoint: USD per 1M completion tokens")
    tokenizer: str | None = Field(None, description="endpoint: count tokens with this (HF folder, known model "
                                                    "or .gguf) when the server reports no usage")
    note: str | None = Field(None, description="free text shown in reports")
    reference: str | None = Field(None, description="label of the target this one's quality retention is "
                                                    "computed against (default: the bench's baseline)")
    serve: str | None = Field(None, description="openai: serve this GGUF or known model on 127.0.0.1 for the bench")
    delay_ms: int = Field(0, ge=0, description="with serve: added latency per request (a network stand-in)")
    timeout: float = Field(120.0, gt=0, description="endpoint: seconds before a request counts as failed")

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, value: Any) -> Any:
        return parse_spec(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
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
    """`gguf:PATH`, `hf:PATH_OR_KNOWN_NAME`, `openai:MODEL@BASE_URL` -> the mapping form.

    The openai shorthand sends no key: an endpoint that needs one takes the mapping form with `api_key_env`."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in ("gguf", "hf", "openai"):
        raise ValueError(f"'{secrets.scrub(spec)}' is not gguf:PATH, hf:PATH_OR_NAME or openai:MODEL@BASE_URL")
    if kind == "openai":
        model, at, url = rest.partition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"'{secrets.scrub(spec)}' needs the form openai:MODEL@http(s)://HOST/v1")
        return {"kind": "openai", "model": model, "base_url": url.rstrip("/")}
    if kind == "hf" and not Path(rest).expanduser().exists() and not rest.startswith((".", "/", "~")):
        return {"kind": "hf", "model": rest}  # a known model name or an HF id
    return {"kind": kind, "path": rest}


@dataclass
class Target:
    """A target ready to run: paths resolved (from upstream outputs too), no secrets inside."""

    label: str
    kind: str
    location: str  # gguf file, hf folder/id, or the endpoint's base URL
    model: str | None
    api: str
    messages_prefix: list[dict]  # system + few-shot turns
    n_threads: int | None
    n_ctx: int
    api_key_env: str | None  # the variable's name only; the key is read by the client when it connects
    tokenizer: str | None
    timeout: float
    prompt_cache: bool = False


@dataclass
class Reply:
    text: str
    ttft_s: float | None  # None when no text came at all
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int
    token_source: str  # tokenizer | usage | estimate


class RequestError(Exception):
    """One request failed (HTTP error, broken or incomplete stream); recorded, and the target goes on."""


def completion_text(target: Target, prompt: str) -> str:
    from slmkit.pipelines.teachers import completion_prompt

    return completion_prompt([*target.messages_prefix, {"role": "user", "content": prompt}])


# ---------------------------------------------------------------- gguf (llama-cpp-python)

# Per api: the Llama method, how it takes the request, and the text of one streamed chunk.
_GGUF_API = {
    "chat": ("create_chat_completion", lambda t, p: {"messages": [*t.messages_prefix, {"role": "user", "content": p}]},
             lambda c: c["choices"][0].get("delta", {}).get("content") or ""),
    "completions": ("create_completion", lambda t, p: {"prompt": completion_text(t, p)},
                    lambda c: c["choices"][0].get("text") or ""),
}


class GGUFBackend:
    def __init__(self, target: Target):
        from llama_cpp import Llama

        self.t = target
        self.llm = Llama(model_path=target.location, n_ctx=target.n_ctx, n_threads=target.n_threads or usable_cores(),
                         verbose=False)
        self._prompt_tokens = 0
        generate = self.llm.generate

        def counted_generate(tokens, *args, **kwargs):
            # The exact prompt llama.cpp evaluates (chat template applied): its length is the prompt token count.
            self._prompt_tokens = len(tokens)
            return generate(tokens, *args, **kwargs)

        self.llm.generate = counted_generate

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> Reply:
        method, feed, piece_of = _GGUF_API[self.t.api]
        if not self.t.prompt_cache:
            # Forget the previous request's tokens: the whole prompt is prefilled in the same batches every
            # time, so the same request gets the same greedy answer whatever ran before it.
            self.llm.reset()
        parts: list[str] = []
        first = None
        start = time.perf_counter()
        for chunk in getattr(self.llm, method)(**feed(self.t, prompt), max_tokens=max_tokens, temperature=0.0,
                                               stream=True, stop=stop or None):
            piece = piece_of(chunk)
            if piece:
                first = first or time.perf_counter()
                parts.append(piece)
        end = time.perf_counter()
        text = "".join(parts)
        return Reply(text, None if first is None else first - start, end - start, self._prompt_tokens,
                     self.count(text), "tokenizer")

    def close(self) -> None:
        self.llm.close()


# ---------------------------------------------------------------- hf (transformers)


class HFBackend:
    def __init__(self, target: Target):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if target.n_threads:
            torch.set_num_threads(target.n_threads)
        self.t = target
        self.tok = AutoTokenizer.from_pretrained(target.location)
        self.model = AutoModelForCausalLM.from_pretrained(target.location, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos = {*eos_ids, self.tok.eos_token_id} - {None}

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _prompt_ids(self, prompt: str):
        if self.t.api == "chat":
            messages = [*self.t.messages_prefix, {"role": "user", "content": prompt}]
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
        return self.tok(completion_text(self.t, prompt), return_tensors="pt")["input_ids"]

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> Reply:
        import torch

        start = time.perf_counter()
        ids = self._prompt_ids(prompt)
        new: list[int] = []
        first = None
        past = None
        step_input = ids
        with torch.inference_mode():
            # Greedy decoding over the KV cache, one token per step, so the first token's time is observable.
            for _ in range(max_tokens):
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                if nxt in self.eos:
                    break
                first = first or time.perf_counter()
                new.append(nxt)
                if stop and any(s in self.tok.decode(new[-8:], skip_special_tokens=True) for s in stop):
                    break
                step_input = torch.tensor([[nxt]])
        end = time.perf_counter()
        text = _cut_at_stop(self.tok.decode(new, skip_special_tokens=True), stop)
        return Reply(text, None if first is None else first - start, end - start, int(ids.shape[1]),
                     self.count(text), "tokenizer")

    def close(self) -> None:
        pass


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


# ---------------------------------------------------------------- openai-compatible endpoint

# Per api: the route, how it takes the request, and the text of one streamed choice.
_OPENAI_API = {
    "chat": ("/chat/completions", lambda t, p: {"messages": [*t.messages_prefix, {"role": "user", "content": p}]},
             lambda ch: (ch.get("delta") or {}).get("content") or ""),
    "completions": ("/completions", lambda t, p: {"prompt": completion_text(t, p)}, lambda ch: ch.get("text") or ""),
}


class TokenCounter:
    """Counts an endpoint's tokens when it reports no usage: a named tokenizer, else chars/4 (an estimate)."""

    def __init__(self, spec: str | None):
        self.source = "estimate"
        self._count = lambda text: (len(text) + 3) // 4
        if not spec:
            return
        if spec.endswith(".gguf"):
            from llama_cpp import Llama

            llm = Llama(model_path=spec, vocab_only=True, verbose=False)
            self._count = lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        else:
            from slmkit.pipelines.models import resolve
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(resolve(spec))
            self._count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
        self.source = "tokenizer"

    def __call__(self, text: str) -> int:
        return self._count(text) if text else 0


class OpenAIBackend:
    def __init__(self, target: Target):
        import httpx

        self.t = target
        headers = {}
        # Only the variable this target names, read here, sent in a header, never stored in the target, a result
        # or a log; no api_key_env means no Authorization header at all.
        key = secrets.key_for(target.api_key_env, target.location, f"bench target '{target.label}' api_key_env")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=target.location, headers=headers, timeout=target.timeout)
        self.counter = TokenCounter(target.tokenizer)

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> Reply:
        import httpx

        route, feed, piece_of = _OPENAI_API[self.t.api]
        body = {"model": self.t.model, **feed(self.t, prompt), "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        if stop:
            body["stop"] = stop
        parts: list[str] = []
        usage: dict | None = None
        first = None
        finished = False
        start = time.perf_counter()
        try:
            with self.client.stream("POST", route, json=body) as resp:
                if resp.status_code >= 400:
                    raise RequestError(f"HTTP {resp.status_code}: {resp.read().decode(errors='replace')[:200]}")
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        finished = True
                        break
                    event = json.loads(payload)
                    if event.get("error"):
                        raise RequestError(f"error event: {str(event['error'])[:200]}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        piece = piece_of(choice)
                        if piece:
                            first = first or time.perf_counter()
                            parts.append(piece)
                        finished = finished or bool(choice.get("finish_reason"))
        except httpx.HTTPError as exc:
            raise RequestError(f"{type(exc).__name__}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise RequestError(f"malformed event: {exc}") from None
        end = time.perf_counter()
        if not finished:
            raise RequestError("the stream ended before the answer did (no finish_reason, no [DONE])")
        text = "".join(parts)
        if usage and usage.get("completion_tokens") is not None:
            prompt_tokens, completion_tokens, source = int(usage.get("prompt_tokens") or 0), \
                int(usage["completion_tokens"]), "usage"
        else:
            sent = "\n".join(m["content"] for m in feed(self.t, prompt).get("messages", [])) \
                or feed(self.t, prompt).get("prompt", "")
            prompt_tokens, completion_tokens, source = self.counter(sent), self.counter(text), self.counter.source
        return Reply(text, None if first is None else first - start, end - start, prompt_tokens, completion_tokens,
                     source)

    def close(self) -> None:
        self.client.close()


BACKENDS = {"gguf": GGUFBackend, "hf": HFBackend, "openai": OpenAIBackend}
LOCAL = {"gguf", "hf"}  # run in a child process of their own, so their memory is theirs alone


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
