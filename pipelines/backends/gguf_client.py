"""A GGUF model run in-process by llama-cpp-python, one request at a time.

Every request is prefilled from scratch unless `prompt_cache` is on: llama.cpp would keep the previous prompt's
KV cache and evaluate only what follows the common prefix, and a prefill of another batch shape rounds
differently, so greedy decoding could give the same request another answer depending on what came before.

Streamed requests use llama-cpp-python's own stream (the time of the first piece of text is what a user of it
sees); plain ones its plain call. The prompt's token count is the length of the exact token list llama.cpp
evaluates (chat template applied), seen by wrapping `generate` on this instance.
"""

from __future__ import annotations

import threading
import time

from slmkit.pipelines.backends import llama_adapter
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


# Per api: the call, and the text of a whole choice / a streamed chunk's choice.
_APIS = {
    "chat": (_chat, lambda ch: ch["message"]["content"] or "", lambda ch: (ch.get("delta") or {}).get("content") or ""),
    "completions": (_completion, lambda ch: ch.get("text") or "", lambda ch: ch.get("text") or ""),
}


@register("gguf")
class GGUFClient:
    def __init__(self, spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None):
        self.spec = spec
        self.llm = llama_adapter.open_llama(spec.location, n_ctx=spec.n_ctx or DEFAULT_N_CTX,
                                            n_threads=spec.n_threads, what=spec.where)
        self._lock = threading.Lock()
        self._prompt_tokens = 0

        def counted(generate):
            def counted_generate(tokens, *args, **kwargs):
                self._prompt_tokens = len(tokens)
                return generate(tokens, *args, **kwargs)
            return counted_generate

        llama_adapter.wrap_method(self.llm, "generate", counted)

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def complete(self, request: Request) -> Completion:
        if request.logprobs:
            raise SlmkitError(f"{self.spec.where}: log-probabilities are not available from a gguf model here; "
                              "use an hf model for them")
        call, whole, piece_of = _APIS[self.spec.api]
        kw = {"max_tokens": request.max_tokens, "temperature": request.temperature, "stop": request.stop or None}
        kw |= {k: getattr(request, k) for k in ("top_p", "seed") if getattr(request, k) is not None}
        with self._lock:
            if not self.spec.prompt_cache:
                self.llm.reset()
            start = time.perf_counter()
            if not request.stream:
                out = call(self.llm, request, kw, False)
                end = time.perf_counter()
                usage = out.get("usage") or {}
                choice = out["choices"][0]
                return Completion(whole(choice), int(usage.get("prompt_tokens", 0)),
                                  int(usage.get("completion_tokens", 0)), None, end - start, "usage",
                                  choice.get("finish_reason"))
            parts: list[str] = []
            first, finish = None, None
            for chunk in call(self.llm, request, kw, True):
                choice = chunk["choices"][0]
                piece = piece_of(choice)
                if piece:
                    first = first or time.perf_counter()
                    parts.append(piece)
                finish = finish or choice.get("finish_reason")
            end = time.perf_counter()
            text = "".join(parts)
            return Completion(text, self._prompt_tokens, self.count(text), None if first is None else first - start,
                              end - start, "tokenizer", finish)

    def close(self) -> None:
        self.llm.close()
