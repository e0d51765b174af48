"""dedup: exact duplicates, after case, spacing (and optionally punctuation and digits) are folded away.

The first record with a key stays; every later one goes, naming the record it repeats."""

from __future__ import annotations

import hashlib
import re
from functools import partial
from typing import Literal

from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import (
    WS,
    Env,
    FilterResult,
    Part,
    Record,
    Verdict,
    pmap,
    sift,
    view,
)


class DedupFilter(StrictModel):
    type: Literal["dedup"]
    name: str | None = None
    part: Part = "all"
    ignore_case: bool = True
    ignore_punctuation: bool = False
    # Off by default: templated records that differ only in ids or amounts are distinct examples.
    ignore_digits: bool = False


_PUNCT = re.compile(r"[^\w\s]+")
_DIGITS = re.compile(r"\d+")


def dedup_key(text: str, ignore_case: bool, ignore_punctuation: bool, ignore_digits: bool) -> bytes:
    if ignore_case:
        text = text.casefold()
    if ignore_punctuation:
        text = _PUNCT.sub(" ", text)
    if ignore_digits:
        text = _DIGITS.sub("0", text)
    return hashlib.blake2b(WS.sub(" ", text).strip().encode("utf-8"), digest_size=16).digest()


def run_dedup(cfg: DedupFilter, records: list[Record], env: Env) -> FilterResult:
    key = partial(dedup_key, ignore_case=cfg.ignore_case, ignore_punctuation=cfg.ignore_punctuation,
                  ignore_digits=cfg.ignore_digits)
    keys = pmap(key, [view(r, cfg.part) for r in records], env)
    first: dict[bytes, str] = {}  # key -> where the record that holds it was read

    def decide(rec: Record, k: bytes) -> Verdict:
        if k in first:
            return f"exact duplicate of {first[k]}"
        first[k] = rec["_where"]
        return None

    return sift(records, keys, decide)
