"""Every part of llama-cpp-python that slmkit uses beyond its documented `Llama` methods, in one place.

slmkit needs a few things the public API does not give: the model's trained context and BOS rule
(`Llama._model`), whether a token ends generation, the chat handler a chat request will use, a way to see the
tokens of a request as they are sampled (wrapping `generate`, `eval` and `create_completion` on one instance),
rewinding the context (`n_tokens`), the logits kept by `logits_all` (`scores`), the Jinja chat renderer, and
handing llama.cpp's log to a callback and back (`_logger`). These are internals: an upgrade of llama-cpp-python
may move any of them. Each one is used through a function here, and tests/test_llama_adapter.py has a test per
function, so an upgrade breaks one test that names the internal instead of a server, a benchmark and an eval.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slmkit.pipelines.core.defaults import usable_cores
from slmkit.pipelines.core.errors import SlmkitError

# The instance methods slmkit may wrap, and what each call is: create_completion is where every request ends up
# (chat handlers format the prompt and call it), generate samples one token at a time, eval feeds tokens in.
WRAPPABLE = ("create_completion", "generate", "eval")


def open_llama(path: str | Path, n_ctx: int, n_threads: int | None = None, *, logits_all: bool = False,
               what: str = "llama.cpp", **kwargs: Any):
    """A Llama over one GGUF file on the CPU, quiet. `n_threads`: every core this process may use by default."""
    from llama_cpp import Llama

    if not Path(path).is_file():
        raise SlmkitError(f"{what}: no GGUF file at {path}")
    try:
        return Llama(model_path=str(path), n_ctx=int(n_ctx), n_threads=int(n_threads or usable_cores()),
                     logits_all=logits_all, verbose=False, **kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise SlmkitError(f"{what}: llama.cpp could not load {path}: {exc}") from None


def open_for_requests(path: str | Path, n_ctx: int, n_threads: int | None = None, *, what: str = "llama.cpp"):
    """A Llama that answers requests (serve's slots, the in-process GGUF client): prompts prefilled in batches of
    PREFILL_BATCH tokens, which is also how finely a shared prefix is reused (pipelines/core/defaults.py)."""
    from slmkit.pipelines.core.defaults import PREFILL_BATCH

    return open_llama(path, n_ctx, n_threads, what=what, n_batch=PREFILL_BATCH, n_ubatch=PREFILL_BATCH)


def n_ctx_train(llm) -> int:
    """The context length the model was trained with (0 when the GGUF does not say)."""
    return int(llm._model.n_ctx_train())


def adds_bos(llm) -> bool:
    """Whether the model's tokenizer puts a BOS token first (recorded in the GGUF at conversion)."""
    return bool(llm._model.add_bos_token())


def is_end_of_generation(llm, token: int) -> bool:
    """An end-of-generation token (EOS, EOT, ...): it ends an answer and is no part of its text."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def longest_token_bytes(llm) -> int:
    """The most bytes any one token stands for (a text longer than n_ctx × this cannot fit, untokenised)."""
    model = llm._model
    return max(1, max(len(model.token_get_text(i).encode("utf-8", "replace")) for i in range(llm.n_vocab())))


def chat_handler(llm) -> Callable[..., Any]:
    """The handler `create_chat_completion` will use: the instance's own, the GGUF template's, or a named format."""
    from llama_cpp import llama_chat_format

    return (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
            or llama_chat_format.get_chat_completion_handler(llm.chat_format))


def wrap_method(llm, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace one instance's method `name` by `wrapper(original)`; the class and other instances are untouched."""
    if name not in WRAPPABLE:
        raise ValueError(f"wrap_method: '{name}' is not one of {', '.join(WRAPPABLE)}")
    setattr(llm, name, wrapper(getattr(llm, name)))


def rewind(llm, n_tokens: int) -> None:
    """Forget every token after the first `n_tokens`; their KV entries are overwritten by the next eval."""
    llm.n_tokens = int(n_tokens)


def position(llm) -> int:
    """How many tokens the context holds (the next eval writes from here)."""
    return int(llm.n_tokens)


def evaluated_tokens(llm, start: int, end: int) -> list[int]:
    """The token ids the context evaluated at positions start..end-1."""
    return [int(t) for t in llm.input_ids[start:end]]


def batch_size(llm) -> int:
    """n_batch: a prompt is evaluated in batches of this many tokens, from where the context stands."""
    return int(llm.n_batch)


def last_logits(llm):
    """The logits the next token is sampled from: the last evaluated position's (a copy, shape [n_vocab]).
    llama.cpp keeps them after every decode even with logits_all=False, so a generate hook can read the
    distribution each sampled token came from without the memory of logits for every position."""
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def scores(llm):
    """The logits of every evaluated position (a view; needs logits_all=True), shape [n_tokens, n_vocab]."""
    return llm.scores


def chat_formatter(template: str, eos_token: str, bos_token: str) -> Callable[..., Any]:
    """llama-cpp-python's Jinja renderer of a chat template, the one its chat requests use:
    `formatter(messages=[...]).prompt` is the text (generation prompt added)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True)


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """llama.cpp's log lines while the block runs, kept in a list instead of going to stderr; the logger
    llama-cpp-python installs is put back afterwards."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
