"""What every filter shares: the record views, the one keep/remove loop, the worker pool, the progress hook.

A filter is two steps. First it measures each record (a hash, a signature, a score, a reason), on worker
processes when that costs real time (`pmap`). Then `sift` walks the records in order and asks a `decide`
function what to do with each measure: None keeps the record, a string removes it and is the reason the
report shows. Decisions that need a global view (which record came first, the LSH index) live in `decide`
and run in the parent in record order, so the result never depends on the number of processes. Filters
that edit text and remove nothing (normalize, pii) go through `rewrite` instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from slmkit.pipelines.curate.io import record_text

Record = dict[str, Any]
Verdict = str | None  # None keeps a record; a string removes it, with that reason

# Which part of a record a filter looks at. "user" is what the model is asked (prompt, user turns, raw text),
# "assistant" what it should answer; templated instructions shared by every prompt can swamp "all".
Part = Literal["all", "user", "assistant"]
PART_KEYS = {"user": ("prompt", "text"), "assistant": ("response",)}  # the fields of a non-chat record

WORD = re.compile(r"\w+")
WS = re.compile(r"\s+")


def view(rec: Record, part: str) -> str:
    if part == "all":
        return record_text(rec)
    if "messages" in rec:
        return "\n".join(m["content"] for m in rec["messages"] if m["role"] == part)
    return "\n".join(rec[k] for k in PART_KEYS[part] if k in rec)


@dataclass
class FilterResult:
    kept: list[Record]
    removed: list[tuple[Record, str]] = field(default_factory=list)
    modified: int = 0  # records whose text was rewritten (normalize, pii)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    """What filters share: worker count, eval items, a progress callback (advance by n records)."""

    num_proc: int = 1
    eval_items: list[tuple[str, list[str]]] = field(default_factory=list)  # (where, its strings)
    advance: Callable[[int], None] = lambda n: None
    log: Callable[[str], None] = lambda msg: None


def verdict_as_is(rec: Record, why: Verdict) -> Verdict:
    """For measures that already are verdicts (quality's first failed check)."""
    return why


def sift(records: list[Record], measures: Iterable[Any],
         decide: Callable[[Record, Any], Verdict] = verdict_as_is, notes: dict[str, Any] | None = None) -> FilterResult:
    """The keep/remove loop: `decide(record, its measure)` for each record in order, kept and removed in order.

    `measures` is read lazily and must hold one value per record (a mismatch is a bug, and raises)."""
    res = FilterResult(kept=[], notes=notes if notes is not None else {})
    for rec, measure in zip(records, measures, strict=True):
        why = decide(rec, measure)
        if why is None:
            res.kept.append(rec)
        else:
            res.removed.append((rec, why))
    return res


def rewrite(edits: Iterable[tuple[Record, bool]]) -> FilterResult:
    """The loop for filters that edit text and remove nothing: (new record, whether it changed) per record."""
    res = FilterResult(kept=[])
    for rec, changed in edits:
        res.kept.append(rec)
        res.modified += changed
    return res


_TASK: Callable[[Any], Any] | None = None  # the function forked workers run (inherited, so lambdas work)


def _run_task(batch: list[Any]) -> list[Any]:
    assert _TASK is not None
    return [_TASK(x) for x in batch]


def pmap(fn: Callable[[Any], Any], items: list[Any], env: Env, chunk: int = 512) -> list[Any]:
    """`fn` over `items` in order, on env.num_proc processes when the work is big enough to pay for them."""
    global _TASK
    if env.num_proc <= 1 or len(items) < 4 * chunk:
        out = []
        for start in range(0, len(items), chunk):
            out.extend(fn(x) for x in items[start:start + chunk])
            env.advance(min(chunk, len(items) - start))
        return out
    import multiprocessing as mp

    batches = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    out = []
    _TASK = fn
    try:
        # fork: the workers inherit `_TASK` and the loaded modules instead of pickling and re-importing them
        with mp.get_context("fork").Pool(env.num_proc) as pool:
            for res in pool.imap(_run_task, batches):
                out.extend(res)
                env.advance(len(res))
    finally:
        _TASK = None
    return out


def clip(text: str, n: int = 160) -> str:
    """One line for reports and tables: newlines shown as ⏎, long text cut."""
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= n else text[:n] + "…"
