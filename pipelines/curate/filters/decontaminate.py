"""decontaminate: remove records that reproduce an eval item (word n-gram coverage of one of its fields)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.curate.filters.base import WORD, Env, FilterResult, Part, Record, Verdict, sift, view

Gram = tuple[str, ...]


class DecontaminateFilter(StrictModel):
    type: Literal["decontaminate"]
    name: str | None = None
    part: Part = "all"
    ngram: int = Field(8, ge=1, description="word n-gram size")
    # Demo tickets: a leaked eval ticket covers 100%, one that differs only in the name and an added line 96%,
    # distinct tickets built from the same stock sentences up to 79%. A typo costs only the word it hits.
    threshold: float = Field(0.9, gt=0, le=1,
                             description="share of an eval field's words covered by a record's n-grams that removes it")
    common_fraction: float = Field(0.1, gt=0, le=1,
                                   description="n-grams in more than this fraction of eval items are template text "
                                               "shared by every item (instructions), not content, and are ignored")


def _gram_list(text: str, n: int) -> list[Gram]:
    words = WORD.findall(text.casefold())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _coverage(grams: list[Gram], n: int, hit: Callable[[Gram], bool], skip: list[bool]) -> float:
    """Share of a field's words (those not in template text) inside an n-gram for which `hit` holds."""
    covered = [False] * (len(grams) + n - 1)
    for i, g in enumerate(grams):
        if hit(g):
            covered[i:i + n] = [True] * n
    own = [c for c, s in zip(covered, skip, strict=True) if not s]
    return sum(own) / len(own) if own else 0.0


def run_decontaminate(cfg: DecontaminateFilter, records: list[Record], env: Env) -> FilterResult:
    """A record goes when its n-grams cover `threshold` of the words of some field of an eval item (its
    question, passage or answer), not counting template words that most eval items share (an instruction).
    Coverage of words, not a share of n-grams: one typo breaks n n-grams but leaves the words around it
    covered. Fields shorter than `ngram` words (labels such as "low") cannot be told from chance and are skipped."""
    if not env.eval_items:
        raise SlmkitError("curate.filters (decontaminate): no eval sets to decontaminate against; set curate.eval")
    n = cfg.ngram
    probes: list[tuple[int, list[Gram]]] = []  # (eval item, n-grams of one of its fields, in order)
    for item, (_, strings) in enumerate(env.eval_items):
        for text in strings:
            grams = _gram_list(text, n)
            if grams:
                probes.append((item, grams))
    per_item: dict[int, set[Gram]] = defaultdict(set)
    for item, grams in probes:
        per_item[item].update(grams)
    df = Counter(g for grams in per_item.values() for g in grams)  # n-gram -> eval items holding it
    common_above = max(2, cfg.common_fraction * len(env.eval_items))
    template: list[list[bool]] = []
    index: dict[Gram, list[int]] = defaultdict(list)
    for p, (_, grams) in enumerate(probes):
        skip = [False] * (len(grams) + n - 1)
        for i, g in enumerate(grams):
            if df[g] > common_above:
                skip[i:i + n] = [True] * n  # a word inside a template n-gram is template, not content
            else:
                index[g].append(p)
        template.append(skip)
    notes = {"eval_items": len(env.eval_items), "fields": len(probes), "ngram": n,
             "template_ngrams_ignored": sum(1 for c in df.values() if c > common_above)}

    def decide(rec: Record, text: str) -> Verdict:
        mine = set(_gram_list(text, n))
        candidates = {p for g in mine for p in index.get(g, ())}
        worst = max(((_coverage(probes[p][1], n, mine.__contains__, template[p]), p) for p in candidates),
                    default=(0.0, -1))
        if worst[0] >= cfg.threshold:
            where = env.eval_items[probes[worst[1]][0]][0]
            return f"overlaps eval item {where} ({worst[0]:.0%} of a field's words)"
        return None

    res = sift(records, (view(r, cfg.part) for r in records), decide, notes=notes)
    env.advance(len(records))
    return res
