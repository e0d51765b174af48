"""Reported figures kept per kind of machine, for `slmkit bench|route|agent --check/--write-reported`.

A reported file holds what is shared (tolerances, the speed reference, what each figure means) at its top level
and one set of figures per machine kind under `machines` (see core/machine.py for why a kind matters):

    {"tolerances": {...}, "machines": {"avx2":   {"about": "...", "targets": {...}},
                                       "avx512": {"about": "...", "targets": {...}}}}

Each set comes from one run on a machine of that kind (`--write-reported` adds or replaces the set of the kind
the results were measured on and keeps the others). `--check` holds a run to the set of its own kind first; a
run that misses there, or on a kind nobody reported, is held to each set in turn and passes if it reproduces one
of them whole, and the table says which. A file without `machines` is one set for every kind, as files were
before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from slmkit.pipelines.core import machine
from slmkit.pipelines.core.errors import SlmkitError

ANY = "any"  # the kind of a file without `machines`
C = TypeVar("C")


def result_kind(results: dict) -> str:
    """The kind a result file was measured on; this machine's for files written before it was recorded."""
    return (results.get("machine") or {}).get("isa") or machine.isa()


def figure_sets(reported: dict, where: str) -> dict[str, dict]:
    """kind -> the reported file as seen by a machine of that kind (shared keys plus that kind's set)."""
    kinds = reported.get("machines")
    if kinds is None:
        return {ANY: reported}
    if not isinstance(kinds, dict) or not kinds or not all(isinstance(v, dict) for v in kinds.values()):
        raise SlmkitError(f"{where}: 'machines' must map a machine kind (avx512, avx2, ...) to its figures")
    shared = {k: v for k, v in reported.items() if k != "machines"}
    return {kind: {**shared, **figures} for kind, figures in kinds.items()}


def check_by_kind(reported: dict, results: dict, where: str,
                  check: Callable[[dict], list[C]], missed: Callable[[C], bool]) -> tuple[str, str, list[C]]:
    """Run `check` (reported view -> checks) against the set of the results' machine kind; if that set has
    misses, or there is none for this kind, against every set, keeping the one with fewest misses (this kind's
    on a tie). A run that reproduces one reported run whole reproduces the figures: the kind is a good guess
    at which run a machine repeats, not a rule (a CPU of a kind nobody measured, or one whose maths library
    takes another path, may repeat the other). Returns (set used, why, checks)."""
    sets = figure_sets(reported, where)
    kind = result_kind(results)
    own = kind if kind in sets else ANY if ANY in sets else None
    tried = {own: check(sets[own])} if own else {}
    if own is None or any(map(missed, tried[own])):
        tried |= {k: check(view) for k, view in sets.items() if k != own}
    used = min(tried, key=lambda k: (sum(map(missed, tried[k])), k != own))
    if used == ANY:
        why = "figures reported for every machine kind"
    elif used == kind:
        why = f"figures reported on a machine of this run's kind ({kind})"
    elif own is None:
        why = f"no figures reported for this run's kind ({kind}); the closest set, of {len(sets)}, is {used}'s"
    else:
        why = f"this run ({kind}) repeats the {used} machine's figures, not its own kind's"
    return used, why, tried[used]


def write_set(path: Path, doc: dict, kind: str, set_keys: tuple[str, ...]) -> dict:
    """Write `doc` as the figures of machine kind `kind` into the reported file at `path`: the keys in
    `set_keys` (and `about`) go under machines.KIND, the rest is shared; other kinds' sets are kept. Returns
    the whole file as written."""
    from slmkit.pipelines.core.rundir import write_json

    old = {}
    if Path(path).exists():
        try:
            old = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise SlmkitError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); not overwriting it") from None
    kinds = dict(old.get("machines") or {}) if isinstance(old, dict) else {}
    own = ("about", *set_keys)
    kinds[kind] = {k: doc[k] for k in own if k in doc}
    shared = {k: v for k, v in doc.items() if k not in own}
    if isinstance(old, dict) and "tolerances" in old:  # margins someone set by hand outlive a new run's figures
        shared["tolerances"] = old["tolerances"]
    out = {**shared, "machines": dict(sorted(kinds.items()))}
    write_json(path, out)
    return out
