"""Checks on a teacher's answer: JSON parse, JSON schema, regex, length bounds. Each failure has a reason name
so the report can count them."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field

from slmkit.pipelines.core.types import StrictModel


class ValidateConfig(StrictModel):
    json_parse: bool = Field(False, description="the answer must be valid JSON")
    json_schema: dict[str, Any] | None = Field(None, description="a JSON schema the parsed answer must satisfy")
    regex: str | None = Field(None, description="the answer must match this regular expression (re.search)")
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, gt=0)


def _strip_fence(text: str) -> str:
    # Teachers often wrap JSON in a ```json fence; the content is what counts.
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.S)
    return m.group(1) if m else text


def _json(text: str, cfg: ValidateConfig) -> str | None:
    if not (cfg.json_parse or cfg.json_schema):
        return None
    try:
        value = json.loads(_strip_fence(text))
    except json.JSONDecodeError:
        return "json_parse"
    if cfg.json_schema:
        import jsonschema

        if not jsonschema.Draft202012Validator(cfg.json_schema).is_valid(value):
            return "json_schema"
    return None


def _length(text: str, cfg: ValidateConfig) -> str | None:
    if len(text.strip()) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long"
    return None


def _regex(text: str, cfg: ValidateConfig) -> str | None:
    return "regex" if cfg.regex and not re.search(cfg.regex, text) else None


# In order: the first failing check names the reason.
CHECKS = (_length, _json, _regex)


def check(text: str, cfg: ValidateConfig) -> str | None:
    """None when the answer passes, else the reason it fails."""
    for fn in CHECKS:
        reason = fn(text, cfg)
        if reason:
            return reason
    return None
