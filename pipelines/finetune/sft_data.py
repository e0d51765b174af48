"""Supervised fine-tuning data: JSONL records → chat-template tokens with assistant-only labels → packed rows.

Three steps, each a plain function so tests can check them one by one:
- `read_conversations`: a JSONL of chat `messages` or `prompt`/`response` records, every bad line named.
- `encode`: the model's own chat template renders the conversation; only assistant turns (with their
  end-of-turn token, so the model learns to stop) carry labels, everything else is -100.
- `pack` + `PackedCollator`: short examples share a row so compute goes to real tokens, and a block-diagonal
  causal mask keeps each example from attending to the others. position_ids alone are not enough: with SDPA
  on the CPU transformers builds a plain causal mask from them, so examples would see their neighbours
  (tests/test_finetune_data.py checks the logits of a packed row against each example run alone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError

IGNORE = -100  # label value that the loss skips

@dataclass(frozen=True)
class NamedTemplate:
    jinja: str
    stop: str  # the end-of-turn text; merge makes it a generation stop token when it is one token


# Used only when asked for by name (`chat_template: chatml`) for a base model that has none of its own.
# `gemma` uses the Gemma tokenizers' own turn tokens (a Gemma base has them but no template); it has no system
# role, so a system message becomes a user turn of its own.
DEFAULT_TEMPLATES = {
    "chatml": NamedTemplate(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>"),
    "gemma": NamedTemplate(
        "{{ bos_token }}{% for message in messages %}<start_of_turn>"
        "{{ 'model' if message['role'] == 'assistant' else 'user' }}\n{{ message['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        "<end_of_turn>"),
}

ROLES = {"system", "user", "assistant"}


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    teacher: Any = None  # optional per-token teacher top-k (logit distillation), aligned with input_ids


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    teacher_rows: int = 0  # scored tokens with a teacher top-k row (logit KD)
    teacher_target_in_topk: int = 0  # of those, how often the true token is in the teacher's top-k
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


# ---------------------------------------------------------------- reading


class Unanswered(SlmkitError):
    """A prompt with no response: fine for an eval set of prompts, useless for a loss."""


def _messages_of(record: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise SlmkitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SlmkitError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise SlmkitError(f"{where}: messages[{i}] must be {{'role': system|user|assistant, 'content': str}}")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise Unanswered(f"{where}: no assistant message to learn from")
        return out
    if "prompt" in record and "response" in record:
        if not isinstance(record["prompt"], str) or not isinstance(record["response"], str):
            raise SlmkitError(f"{where}: 'prompt' and 'response' must be strings")
        out = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
        return out + [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    if "prompt" in record or "text" in record:
        raise Unanswered(f"{where}: a prompt without a response: nothing to learn from (run distill to have a "
                          "teacher write the responses, or give prompt/response or messages records)")
    raise SlmkitError(f"{where}: a record needs 'messages' or 'prompt' and 'response' (keys: {', '.join(record) or 'none'})")


def read_conversations(path: Path, with_records: bool = False, skip_unanswered: bool = False) -> list:
    """Every conversation in a JSONL file. Blank lines are skipped; a malformed one is an error naming it.

    `skip_unanswered` drops prompt-only records instead of failing (an upstream eval set of bare prompts).
    """
    path = Path(path)
    out = []
    for where, _, record in jsonl.records(path, objects=False):
        try:
            msgs = _messages_of(record, where)
        except Unanswered:
            if skip_unanswered:
                continue
            raise
        out.append((msgs, record, where) if with_records else msgs)
    if not out and not skip_unanswered:
        raise SlmkitError(f"{path}: no training examples (the file is empty)")
    return out


# ---------------------------------------------------------------- templating and labels


def set_chat_template(tokenizer, name: str | None, model_label: str) -> str | None:
    """Use the model's own template; a named default (or a Jinja string) only when asked for.

    Returns the end-of-turn text of a named template (None otherwise). No template at all is an error.
    """
    stop = None
    if name is not None:
        named = DEFAULT_TEMPLATES.get(name)
        tokenizer.chat_template = named.jinja if named else name
        stop = named.stop if named else None
    if not getattr(tokenizer, "chat_template", None):
        raise SlmkitError(
            f"{model_label}: the tokenizer has no chat template; set `finetune.chat_template` "
            f"(flag --chat-template) to one of {', '.join(DEFAULT_TEMPLATES)} or to a Jinja template string"
        )
    return stop


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span runs from the end of the prompt that precedes it (rendered with the generation prompt)
    to the end of the conversation rendered through it, so it includes the template's end-of-turn text.
    This needs a template that renders a conversation's prefixes as prefixes of the whole, which holds for
    ChatML, Llama, Gemma and most others; one that rewrites earlier turns is reported, not silently mislabelled.
    """
    text = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        through = _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise SlmkitError("the chat template does not render a conversation's turns as prefixes of the whole, "
                              "so assistant tokens cannot be located; use a different `chat_template`")
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer, messages: list[dict[str, str]]) -> Example:
    """Token ids of the rendered conversation, labels = ids on assistant tokens and IGNORE elsewhere."""
    text, spans = assistant_spans(tokenizer, messages)
    # The template already writes any BOS/special tokens as text; adding them again would double them.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True):
        inside = any(a <= start < b or (start == end == b and a < b) for a, b in spans)
        labels.append(tok if inside else IGNORE)
    return Example(ids, labels)


def encode_all(tokenizer, conversations: Iterable[list[dict[str, str]]], max_length: int, overlong: str,
               stats: EncodeStats | None = None, teachers: list | None = None) -> list[Example]:
    """Encode every conversation; longer than max_length are truncated or dropped (by `overlong`), and counted.

    `teachers`, for logit distillation: one (teacher_topk record, "file:line") per conversation.
    """
    stats = stats or EncodeStats()
    out = []
    for n, msgs in enumerate(conversations):
        ex = encode(tokenizer, msgs)
        if len(ex.input_ids) > max_length:
            if overlong == "drop":
                stats.dropped_too_long += 1
                continue
            stats.truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.labels[:max_length])
        if all(label == IGNORE for label in ex.labels[1:]):
            stats.dropped_no_target += 1  # nothing left to learn from (e.g. truncated before the answer)
            continue
        if teachers is not None:
            ex.teacher = align_teacher(ex, *teachers[n], n_turns=sum(m["role"] == "assistant" for m in msgs))
            stats.teacher_rows += int(ex.teacher[2].sum())
            stats.teacher_target_in_topk += ex.teacher[3]
        stats.examples += 1
        stats.tokens += len(ex.input_ids)
        stats.target_tokens += sum(label != IGNORE for label in ex.labels[1:])
        out.append(ex)
    return out


def align_teacher(ex: Example, record: dict, where: str, n_turns: int):
    """The teacher's top-k rows laid on this example's scored tokens (labels after position 0, in order).

    Distill stores one row per answer token (pipelines/kd.py). Rows beyond the scored tokens (truncation) are
    cut; scored tokens beyond the rows (the template's end-of-turn text, when the teacher stored the answer
    alone) get plain cross-entropy — allowed for a single assistant turn only, where that tail is unambiguous.
    Returns (ids (S, K), logprobs (S, K), has_row (S,), true token in top-k count).
    """
    import numpy as np

    from slmkit.pipelines.finetune import kd

    ids, lp = kd.decode_topk(record)
    scored = [lab for lab in ex.labels[1:] if lab != IGNORE]
    n = min(len(scored), len(ids))
    if len(ids) < len(scored) and n_turns > 1:
        raise SlmkitError(f"{where}: teacher_topk has {len(ids)} rows for {len(scored)} answer tokens over "
                          f"{n_turns} assistant turns; cannot align them")
    k = ids.shape[1]
    out_ids = np.zeros((len(scored), k), dtype=np.int64)
    out_lp = np.full((len(scored), k), -1e4, dtype=np.float32)
    out_ids[:n], out_lp[:n] = ids[:n], lp[:n]
    has = np.zeros(len(scored), dtype=bool)
    has[:n] = True
    hits = int(sum(int(scored[i]) in set(ids[i].tolist()) for i in range(n)))
    return out_ids, out_lp, has, hits


# ---------------------------------------------------------------- packing


def pack(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Group examples into rows of at most max_length tokens (first-fit decreasing: few rows, little padding).

    Deterministic for a given input order, so a resumed run sees the same rows as the run it continues.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_length - n)
    # Rows keep their examples in the original order; the trainer's sampler shuffles rows.
    return [[examples[i] for i in sorted(row)] for row in rows]


class PackedCollator:
    """Batches rows of one or more examples into tensors.

    Each example gets positions from 0 and a block of the causal mask of its own; padding forms a block of
    its own too (never attended to by real tokens, and no row of the mask is empty, which would give NaN).
    `n_tokens` (real tokens in the batch) is popped by the trainer for tokens/s.
    """

    def __init__(self, pad_id: int, block_mask: bool = True):
        self.pad_id = pad_id
        self.block_mask = block_mask

    def __call__(self, rows: list[list[Example]]) -> dict:
        import torch

        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        n = len(rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        segment = torch.full((n, width), -1, dtype=torch.long)
        real = 0
        for r, row in enumerate(rows):
            at = 0
            for s, ex in enumerate(row):
                k = len(ex.input_ids)
                ids[r, at:at + k] = torch.tensor(ex.input_ids)
                # The model shifts labels: position t is scored on token t+1. An example's first token
                # would be scored from the previous example's last position, across the boundary: mask it.
                lab = torch.tensor(ex.labels)
                lab[0] = IGNORE
                labels[r, at:at + k] = lab
                pos[r, at:at + k] = torch.arange(k)
                segment[r, at:at + k] = s
                at += k
            real += at
            pos[r, at:] = torch.arange(width - at)
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "n_tokens": torch.tensor(real)}
        teachers = [e.teacher for row in rows for e in row]
        if teachers and all(t is not None for t in teachers):
            batch["teacher"] = self._teacher(teachers)
        if self.block_mask:
            same = segment[:, :, None] == segment[:, None, :]
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            batch["attention_mask"] = (same & causal)[:, None, :, :]
        else:
            batch["attention_mask"] = (segment >= 0).long()
        return batch


    @staticmethod
    def _teacher(teachers) -> dict:
        """Per-example top-k rows concatenated in the order the trainer scores positions (row-major), with K
        padded to the largest (id 0 at log-prob -1e4: no mass, and no NaN as -inf would give)."""
        import numpy as np
        import torch

        k = max(t[0].shape[1] for t in teachers)
        ids, lps = [], []
        for t_ids, t_lp, _, _ in teachers:
            pad = k - t_ids.shape[1]
            ids.append(torch.nn.functional.pad(torch.from_numpy(t_ids), (0, pad), value=0))
            lps.append(torch.nn.functional.pad(torch.from_numpy(t_lp), (0, pad), value=-1e4))
        return {"ids": torch.cat(ids), "logprobs": torch.cat(lps),
                "has": torch.from_numpy(np.concatenate([t[2] for t in teachers]))}


def rows_of(examples: list[Example], packing: bool, max_length: int) -> list[list[Example]]:
    """Training rows: packed groups, or one example per row."""
    return pack(examples, max_length) if packing else [[e] for e in examples]
