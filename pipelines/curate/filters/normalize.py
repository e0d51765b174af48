"""normalize: Unicode form, control characters and whitespace, in every text field; removes nothing."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import partial
from typing import Literal

from pydantic import Field

from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import Env, FilterResult, Record, pmap, rewrite
from slmkit.pipelines.curate.io import map_texts, record_text


class NormalizeFilter(StrictModel):
    type: Literal["normalize"]
    name: str | None = None
    form: Literal["NFKC", "NFC", "none"] = "NFKC"
    whitespace: bool = Field(True, description="collapse runs of spaces, trim lines, at most one blank line")
    control_chars: bool = Field(True, description="drop control characters other than newline and tab")


def _control_class() -> re.Pattern:
    """Control (Cc) and format (Cf: zero-width spaces, BOM, bidi marks) characters other than newline and tab,
    as one regex: a per-character Python loop costs more than the rest of the chain."""
    chars = [chr(i) for i in (*range(0x10000), *range(0xE0000, 0xE0080))
             if unicodedata.category(chr(i)) in ("Cc", "Cf") and chr(i) not in "\n\t"]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


_CONTROL = _control_class()
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str, whitespace: bool, control_chars: bool) -> str:
    if form != "none":
        text = unicodedata.normalize(form, text)
    if control_chars:
        text = _CONTROL.sub("", text)
    if whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = _BLANKS.sub("\n\n", text).strip()
    return text


def _normalize_one(rec: Record, fn: Callable[[str], str]) -> Record:
    return map_texts(rec, fn)


def run_normalize(cfg: NormalizeFilter, records: list[Record], env: Env) -> FilterResult:
    fn = partial(normalize_text, form=cfg.form, whitespace=cfg.whitespace, control_chars=cfg.control_chars)
    out = pmap(partial(_normalize_one, fn=fn), records, env)
    return rewrite((new, record_text(old) != record_text(new)) for old, new in zip(records, out, strict=True))
