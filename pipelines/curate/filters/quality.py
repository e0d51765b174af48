"""quality: length, character mix, repetition and boilerplate heuristics; a record goes at the first it fails."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from pydantic import Field

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import Env, FilterResult, Part, Record, pmap, sift, view

BOILERPLATE = (
    r"lorem ipsum",
    r"all rights reserved",
    r"click here to (?:unsubscribe|subscribe|download|read more)",
    r"subscribe to our newsletter",
    r"(?:please )?enable javascript",
    r"we use cookies",
    r"accept (?:all )?cookies",
)


class QualityFilter(StrictModel):
    type: Literal["quality"]
    name: str | None = None
    part: Part = "all"
    min_chars: int | None = Field(10, ge=0)
    max_chars: int | None = Field(100_000, gt=0)
    min_words: int | None = Field(3, ge=0)
    max_words: int | None = Field(20_000, gt=0)
    min_alpha_ratio: float | None = Field(0.5, ge=0, le=1, description="letters / non-space characters")
    max_symbol_ratio: float | None = Field(0.1, ge=0, le=1, description="symbols (#, *, emoji, …) / non-space chars")
    max_repeated_lines: float | None = Field(0.3, ge=0, le=1, description="fraction of lines that repeat another")
    repeated_ngram: int = Field(3, ge=1)
    max_repeated_ngrams: float | None = Field(0.3, ge=0, le=1,
                                              description="fraction of words inside word n-grams seen twice or more")
    boilerplate: list[str] = Field(default_factory=lambda: list(BOILERPLATE),
                                   description="regular expressions (case-insensitive); any match removes")


_COMMON_PUNCT = set(".,;:!?'\"()[]{}-–—/@&%_$€£")


def quality_reason(text: str, cfg: QualityFilter, boilerplate: Any) -> str | None:
    """Why this text fails the quality bar (the first check it fails), or None."""
    words = text.split()
    chars = [c for c in text if not c.isspace()]
    n = max(1, len(chars))
    checks: list[tuple[float | None, Callable[[], float], str, str]] = [
        # (bound, measure, comparison, name): a data table so adding a check is one row
        (cfg.min_chars, lambda: len(text), "<", "chars"),
        (cfg.max_chars, lambda: len(text), ">", "chars"),
        (cfg.min_words, lambda: len(words), "<", "words"),
        (cfg.max_words, lambda: len(words), ">", "words"),
        (cfg.min_alpha_ratio, lambda: sum(c.isalpha() for c in chars) / n, "<", "alpha ratio"),
        (cfg.max_symbol_ratio, lambda: sum(_is_symbol(c) for c in chars) / n, ">", "symbol ratio"),
        (cfg.max_repeated_lines, lambda: repeated_line_fraction(text), ">", "repeated-line fraction"),
        (cfg.max_repeated_ngrams, lambda: repeated_ngram_fraction(words, cfg.repeated_ngram), ">",
         f"repeated {cfg.repeated_ngram}-gram fraction"),
    ]
    for bound, measure, op, name in checks:
        if bound is None:
            continue
        value = measure()
        if (value < bound) if op == "<" else (value > bound):
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            return f"{name} {shown} {op} {bound}"
    if boilerplate is not None:
        hit = boilerplate.search(text)
        if hit:
            return f"boilerplate: '{hit.group(0)}'"
    return None


def _is_symbol(c: str) -> bool:
    if c.isalnum() or c in _COMMON_PUNCT:
        return False
    return unicodedata.category(c).startswith(("S", "P", "C"))


def repeated_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return 0.0
    counts = Counter(lines)
    return sum(c for c in counts.values() if c > 1) / len(lines)


def repeated_ngram_fraction(words: list[str], n: int) -> float:
    """Share of words covered by word n-grams that occur more than once (Gopher-style repetition)."""
    if len(words) < 2 * n:
        return 0.0
    low = [w.casefold() for w in words]
    grams = [tuple(low[i:i + n]) for i in range(len(low) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(covered) / len(words)


def run_quality(cfg: QualityFilter, records: list[Record], env: Env) -> FilterResult:
    try:
        pattern = re.compile("|".join(f"(?:{p})" for p in cfg.boilerplate), re.IGNORECASE) if cfg.boilerplate else None
    except re.error as err:
        raise SlmkitError(f"curate.filters (quality).boilerplate: not a valid regular expression: {err}") from None
    # The per-record check is the whole verdict, so it runs on the workers and the loop just sorts.
    reasons = pmap(partial(quality_reason, cfg=cfg, boilerplate=pattern), [view(r, cfg.part) for r in records], env)
    return sift(records, reasons)
