"""Turning llama-cpp-python's sampled tokens into streamed text pieces that add up to its plain answer.

llama-cpp-python has its own `stream=True` path, but it decodes token by token with `errors="ignore"`, so a
character split over several byte tokens (common for rare characters, emoji, and random test models) goes
missing from the stream while the plain answer has it. slmkit's server therefore runs the plain
(non-streaming) call and watches the tokens as they are sampled: each new token's bytes go through one
incremental UTF-8 decoder, and the text is released as soon as no stop string can still swallow it. The
plain answer that comes back at the end is the truth; the stream's last piece is whatever of it is not yet
sent, so the pieces always add up to exactly the plain text, and `usage` is llama-cpp-python's own.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from slmkit.pipelines.backends import llama_adapter


class GenerationCancelled(Exception):
    """Raised inside generation when the request's client has gone away: the model stops at the next token."""


class LlamaHooks:
    """Wraps three methods on one `Llama` instance to see a completion as it runs.

    `create_completion` is where every request ends up (chat handlers format the prompt and call it with the
    chat format's own stop strings added), so it tells the stop strings in force; `generate` is the loop that
    samples one token at a time; `eval` feeds tokens to the model, and its first call in a request is the
    prefill, so `prefilled` tells how many prompt tokens were evaluated (the rest came from the KV cache).
    Call `begin` before a request (under the model's lock) and `end` after it.
    """

    def __init__(self, llm) -> None:
        self.stops: list[str] = []
        self.on_token: Callable[[int], None] | None = None
        self.cancelled: Callable[[], bool] | None = None
        self.prefilled: int | None = None

        def create_completion(create):
            def seen_create(*args, **kwargs):
                stop = kwargs.get("stop")
                self.stops = [stop] if isinstance(stop, str) else list(stop or [])
                return create(*args, **kwargs)
            return seen_create

        def generate(original):
            def watched_generate(tokens, *args, **kwargs):
                for tok in original(tokens, *args, **kwargs):
                    if self.cancelled is not None and self.cancelled():
                        raise GenerationCancelled
                    # An end-of-generation token ends the answer and is not part of its text.
                    if self.on_token is not None and not llama_adapter.is_end_of_generation(llm, tok):
                        self.on_token(tok)
                    yield tok
            return watched_generate

        def evaluate(original):
            def watched_eval(tokens):
                if self.prefilled is None:
                    self.prefilled = len(tokens)
                return original(tokens)
            return watched_eval

        for name, wrapper in (("create_completion", create_completion), ("generate", generate), ("eval", evaluate)):
            llama_adapter.wrap_method(llm, name, wrapper)

    def begin(self, on_token: Callable[[int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> None:
        self.stops, self.on_token, self.cancelled, self.prefilled = [], on_token, cancelled, None

    def end(self) -> int | None:
        """Stop watching; returns how many prompt tokens this request evaluated (None: it never got that far)."""
        prefilled = self.prefilled
        self.on_token = self.cancelled = self.prefilled = None
        return prefilled


class TextPieces:
    """Sampled tokens in, text that is safe to send out (`push`), then the remainder of the final text (`finish`)."""

    def __init__(self, llm, stops: list[str]) -> None:
        self._llm = llm
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._text = ""  # everything decoded so far
        self.sent = ""

    def push(self, token: int) -> str:
        """The new piece this token makes sendable ('' when it is held back)."""
        self._text += self._decoder.decode(self._llm.detokenize([token]))
        safe = self._releasable(self._text)
        piece = safe[len(self.sent):] if safe.startswith(self.sent) else ""
        self.sent += piece
        return piece

    def finish(self, final_text: str) -> str:
        """The rest of the plain answer, after what was sent (which is always a prefix of it)."""
        if not final_text.startswith(self.sent):  # cannot happen if the rules above match llama's; never resend
            return ""
        rest = final_text[len(self.sent):]
        self.sent = final_text
        return rest

    def _releasable(self, text: str) -> str:
        """`text` cut before any stop string, less a tail that could still grow into one."""
        cut = min((text.find(s) for s in self._stops if s in text), default=len(text))
        text = text[:cut]
        hold = max((n for s in self._stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)
        return text[:len(text) - hold]
