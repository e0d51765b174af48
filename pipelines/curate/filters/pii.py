"""pii: replace e-mail addresses, IBANs, card and phone numbers with a placeholder; removes nothing."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import Field

from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import Env, FilterResult, Record, rewrite
from slmkit.pipelines.curate.io import map_texts

PII_KINDS = ("email", "iban", "card", "phone")  # matched in this order: an IBAN's digits are not a phone number


class PiiFilter(StrictModel):
    type: Literal["pii"]
    name: str | None = None
    kinds: list[Literal["email", "iban", "card", "phone"]] = Field(default_factory=lambda: list(PII_KINDS))
    placeholder: str = Field("[{KIND}]", description="replacement; {KIND} / {kind} is the kind's name")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def phone_ok(s: str) -> bool:
    """7-15 digits (E.164) with a country code, at most 11 without one (national numbers); never an ISO date."""
    n = len(_digits(s))
    international = s.startswith(("+", "("))
    return 7 <= n <= (15 if international else 11) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", s)


# kind -> (pattern, validator of the matched text): a match that fails its check (a Luhn or mod-97 checksum,
# a digit count) is left alone, so order numbers and amounts survive.
PII_PATTERNS: dict[str, tuple[re.Pattern, Callable[[str], bool]]] = {
    "email": (re.compile(r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), lambda s: True),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b"), iban_ok),
    "card": (re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"),
             lambda s: 13 <= len(_digits(s)) <= 19 and luhn_ok(_digits(s))),
    "phone": (re.compile(r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
                         r"|(?<![\w+-])\+\d{7,15}(?![\w-])"),
              lambda s: phone_ok(s)),
}


def redact(text: str, kinds: Iterable[str], placeholder: str) -> tuple[str, Counter]:
    found: Counter = Counter()
    for kind in PII_KINDS:
        if kind not in kinds:
            continue
        pattern, valid = PII_PATTERNS[kind]

        def sub(m: re.Match, kind: str = kind, valid: Callable[[str], bool] = valid) -> str:
            if not valid(m.group(0)):
                return m.group(0)
            found[kind] += 1
            return placeholder.replace("{KIND}", kind.upper()).replace("{kind}", kind)

        text = pattern.sub(sub, text)
    return text, found


def run_pii(cfg: PiiFilter, records: list[Record], env: Env) -> FilterResult:
    totals: Counter = Counter()

    def redacted(rec: Record) -> tuple[Record, bool]:
        found: Counter = Counter()  # this record's redactions, over all its text fields

        def fn(t: str) -> str:
            out, c = redact(t, cfg.kinds, cfg.placeholder)
            found.update(c)
            return out

        new = map_texts(rec, fn)
        totals.update(found)
        return new, bool(found)

    res = rewrite(redacted(rec) for rec in records)
    env.advance(len(records))
    res.notes["redacted"] = {k: totals.get(k, 0) for k in cfg.kinds}
    return res
