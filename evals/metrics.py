"""Per-item quality metrics for domain tasks: a table of name -> scorer.

A scorer takes the model's output text and the reference answer and returns a `Score`: the item's score in
[0, 1] and, for structured metrics, what was checked (so a report can show per-field accuracy and how often
the output was not JSON at all).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Score:
    value: float
    fields: dict[str, bool] = field(default_factory=dict)  # json_fields: field -> equal to the reference
    invalid_json: bool = False


def _norm_text(text: str) -> str:
    """SQuAD-style answer normalisation: case, punctuation, articles and runs of whitespace do not count."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _as_text(answer: Any) -> str:
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def exact_match(output: str, answer: Any) -> Score:
    return Score(float(_norm_text(output) == _norm_text(_as_text(answer))))


def token_f1(output: str, answer: Any) -> Score:
    pred, ref = _norm_text(output).split(), _norm_text(_as_text(answer)).split()
    if not pred or not ref:
        return Score(float(pred == ref))
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return Score(0.0)
    precision, recall = common / len(pred), common / len(ref)
    return Score(2 * precision * recall / (precision + recall))


def first_json_object(text: str) -> dict | None:
    """The first JSON object in `text`, wherever it starts: models wrap answers in code fences and prose.

    Tries every `{` in turn with a real JSON decoder (raw_decode stops at the object's end), so braces inside
    strings and trailing chatter are handled without a hand-written brace matcher."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _norm_value(value: Any) -> Any:
    """Strings compare by case and whitespace-insensitive content; other JSON values as they are."""
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, list):
        return [_norm_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm_value(v) for k, v in value.items()}
    return value


def json_fields(output: str, answer: Any) -> Score:
    """Fraction of the reference's fields that the output's first JSON object gets equal."""
    ref = answer if isinstance(answer, dict) else first_json_object(_as_text(answer))
    if not ref:
        raise ValueError("json_fields needs a reference answer that is a JSON object")
    got = first_json_object(output)
    if got is None:
        return Score(0.0, {k: False for k in ref}, invalid_json=True)
    hits = {k: k in got and _norm_value(got[k]) == _norm_value(v) for k, v in ref.items()}
    return Score(sum(hits.values()) / len(hits), hits)


METRICS: dict[str, Callable[[str, Any], Score]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "json_fields": json_fields,
}
