"""A GGUF model run in-process by llama-cpp-python, one request at a time.

A request reuses the previous one's KV cache only in whole prefill batches of their common prefix
(pipelines/backends/prefix_reuse.py), which evaluates every batch exactly as a prefill from scratch would: the
same request gets the same answer whatever came before, and a long shared prefix (few-shot examples) is
computed once. `prompt_cache` opts into llama-cpp-python's own cache of every common token, where a prefill of
another batch shape rounds differently and a greedy answer can depend on the requests before it;
`from_scratch` prefills every prompt whole.

Streamed requests use llama-cpp-python's own stream (the time of the first piece of text is what a user of it
sees); plain ones its plain call. The prompt's token count is the length of the exact token list llama.cpp
evaluates (chat template applied), seen by wrapping `generate` on this instance.

A request's `json_schema` becomes a llama.cpp grammar (llama-cpp-python's JSON-Schema-to-GBNF converter): each
token is sampled only from those that keep the answer a prefix of a schema-valid JSON value, so even a random
model answers with valid JSON (unless max_tokens cuts it short). `schema_grammar` is shared with slmkit serve,
which applies an OpenAI `response_format` the same way.
"""

from __future__ import annotations

import functools
import json
import threading
import time

from slmkit.pipelines.backends import llama_adapter, prefix_reuse
from slmkit.pipelines.backends.base import ClientSpec, Completion, Request, completion_prompt
from slmkit.pipelines.backends.registry import register
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.errors import SlmkitError

DEFAULT_N_CTX = N_CTX["bench"]  # the caller's ClientSpec usually says; see core/defaults.py


def _chat(llm, req: Request, kw: dict, stream: bool):
    return llm.create_chat_completion(messages=req.messages, stream=stream, **kw)


def _completion(llm, req: Request, kw: dict, stream: bool):
    return llm.create_completion(prompt=completion_prompt(req.messages), stream=stream, **kw)


# llama-cpp-python's converter lets a string hold any character but `"` and `\` (`char ::= [^"\\] | ...`), so a
# model could write a raw newline inside a string and end with text no JSON parser takes ("Invalid control
# character"): 6 of the baseline's 22 invalid calls in the demo's lm-mode runs. JSON forbids U+0000-U+001F
# there, as llama.cpp's own converter and JSON_GBNF do; the rule is narrowed to that.
LOOSE_CHAR = r'char ::= [^"\\] |'
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def schema_gbnf(schema_json: str) -> str:
    """GBNF text of a JSON Schema: llama-cpp-python's converter, with JSON's own string characters."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return "\n".join(JSON_CHAR + line[len(LOOSE_CHAR):] if line.startswith(LOOSE_CHAR) else line
                     for line in json_schema_to_gbnf(schema_json).split("\n"))


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str | None):
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    return LlamaGrammar.from_string(JSON_GBNF if schema_json is None else schema_gbnf(schema_json), verbose=False)


def schema_grammar(schema: dict | None, where: str = "json_schema"):
    """The llama.cpp grammar of a JSON Schema (None: any JSON object, OpenAI's `json_object`), cached per schema
    (an agent sends the same few schemas many times). ValueError naming `where` when the converter cannot take
    the schema (e.g. an unknown `type` or a `$ref` to another document)."""
    try:
        # Key order kept: the grammar writes an object's properties in the order the schema lists them.
        return _grammar(None if schema is None else json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter raises plain Exceptions, KeyErrors, ValueErrors
        raise ValueError(f"{where}: this JSON Schema cannot be enforced as a grammar: "
                         f"{type(exc).__name__}: {exc}") from None


# Per api: the call, and the text of a whole choice / a streamed chunk's choice.
_APIS = {
    "chat": (_chat, lambda ch: ch["message"]["content"] or "", lambda ch: (ch.get("delta") or {}).get("content") or ""),
    "completions": (_completion, lambda ch: ch.get("text") or "", lambda ch: ch.get("text") or ""),
}


@register("gguf")
class GGUFClient:
    def __init__(self, spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None):
        self.spec = spec
        self.llm = llama_adapter.open_for_requests(spec.location, n_ctx=spec.n_ctx or DEFAULT_N_CTX,
                                                   n_threads=spec.n_threads, what=spec.where)
        self._lock = threading.Lock()
        self._prompt_tokens = 0
        self._top_k: int | None = None  # log-probabilities asked for by the request in progress
        self._logprobs: list[dict[str, float]] = []

        def counted(generate):
            def counted_generate(tokens, *args, **kwargs):
                self._prompt_tokens = len(tokens)
                for tok in generate(tokens, *args, **kwargs):
                    if self._top_k and not llama_adapter.is_end_of_generation(self.llm, tok):
                        self._logprobs.append(self._token_logprobs(tok, self._top_k))
                    yield tok
            return counted_generate

        llama_adapter.wrap_method(self.llm, "generate", counted)
        try:
            self._before_request = prefix_reuse.install(
                self.llm, prefix_reuse.prefix_reuse_mode(spec.prompt_cache, spec.from_scratch))
        except ValueError as exc:
            raise SlmkitError(f"{spec.where}: {exc}") from None

    def _token_logprobs(self, tok: int, k: int) -> dict[str, float]:
        """The sampled token's log-probability under the model (before any sampler), then the k-1 likeliest
        others: computed from the logits llama.cpp sampled it from, so no logits_all is needed."""
        import numpy as np

        logits = llama_adapter.last_logits(self.llm).astype(np.float64)
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        best = np.argpartition(-logp, k)[:k] if k < len(logp) else np.arange(len(logp))
        out = {self._piece(tok): float(logp[tok])}
        for i in sorted(best, key=lambda i: -logp[i]):
            if len(out) >= k:
                break
            out.setdefault(self._piece(int(i)), float(logp[i]))
        return out

    def _piece(self, tok: int) -> str:
        return self.llm.detokenize([tok]).decode("utf-8", "replace")

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def complete(self, request: Request) -> Completion:
        call, whole, piece_of = _APIS[self.spec.api]
        kw = {"max_tokens": request.max_tokens, "temperature": request.temperature, "stop": request.stop or None}
        kw |= {k: getattr(request, k) for k in ("top_p", "seed", "frequency_penalty")
               if getattr(request, k) is not None}
        if request.json_schema is not None:
            try:
                kw["grammar"] = schema_grammar(request.json_schema, f"{self.spec.where}: json_schema")
            except ValueError as exc:
                raise SlmkitError(str(exc)) from None
        with self._lock:
            self._before_request()
            self._top_k, self._logprobs = request.logprobs, []
            try:
                return self._complete(request, call, whole, piece_of, kw)
            finally:
                self._top_k = None

    def _complete(self, request: Request, call, whole, piece_of, kw: dict) -> Completion:
        start = time.perf_counter()
        if not request.stream:
            out = call(self.llm, request, kw, False)
            end = time.perf_counter()
            usage = out.get("usage") or {}
            choice = out["choices"][0]
            return Completion(whole(choice), int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)), None, end - start, "usage",
                              choice.get("finish_reason"),
                              self._taken_logprobs(request, int(usage.get("completion_tokens", 0))))
        parts: list[str] = []
        first, finish = None, None
        for chunk in call(self.llm, request, kw, True):
            choice = chunk["choices"][0]
            piece = piece_of(choice)
            if piece:
                first = first or time.perf_counter()
                parts.append(piece)
                if request.on_text is not None:
                    request.on_text(piece)
            finish = finish or choice.get("finish_reason")
        end = time.perf_counter()
        text = "".join(parts)
        return Completion(text, self._prompt_tokens, self.count(text), None if first is None else first - start,
                          end - start, "tokenizer", finish,
                          self._taken_logprobs(request, self.count(text)))

    def _taken_logprobs(self, request: Request, n_tokens: int) -> list[dict[str, float]] | None:
        # llama-cpp-python samples until a stop string is complete and then cuts it from the text, so the
        # stop's own tokens were sampled too: one entry per token of the answer, the first n_tokens.
        return self._logprobs[:n_tokens] if request.logprobs else None

    def close(self) -> None:
        self.llm.close()
