"""`slmkit route --check REPORTED.json`: does a route run back up the hybrid row someone reported?

The row is the reported router at its operating point on held-out requests: its quality, its share of remote
calls and its cost cut against all-remote, each held within a margin. They are counts over a few dozen
requests, and a reproduction on another CPU fine-tunes a student that differs in its last bits, whose
confidences then put a threshold a few requests elsewhere: the demo's cascade sent 19 of 64 requests remote on
the machine that reported it and 23 of 64 on an AVX2-only one, with the same quality. So a share is held
within `share_stderr` standard errors of a proportion over the run's requests (sqrt(p(1-p)/n) at the reported
p), or the absolute margin where that is wider, as bench --check holds lm-eval accuracies. Which router the run
chose is printed: the choice compares each router's held-out share with the goal, and a share that moves by a
few requests can move it across, so it is not held.

    {"router": "cascade", "tolerances": {"quality_abs": 0.05, "remote_share_abs": 0.05, "share_stderr": 2, ...},
     "figures": {"quality": 0.74, "remote_share": 0.28, "remote_spend_ratio": 0.3}}

with `router` and `figures` under `machines.KIND` instead, one set per kind of machine (core/reported.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console

from slmkit.pipelines.bench.check import Check, print_checks, verdict
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.reported import check_by_kind, result_kind, write_set

# cost_cut is reported but not held: its local part is machine time, which moves with the machine.
FIGURES = ("quality", "remote_share", "remote_spend_ratio")
SHARES = ("remote_share", "remote_spend_ratio")  # proportions of the run's requests (spend: their remote cost)
DEFAULT_TOLERANCES = {**{f"{f}_abs": 0.05 for f in FIGURES}, "share_stderr": 2.0}


def _read(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlmkitError(f"{path}: not a readable {what}: {exc}") from None


def write_reported(results: Path, out: Path, console: Console) -> None:
    """The chosen router's row of a route.json, written as its machine kind's set (other kinds' kept)."""
    summary = _read(results, "route.json")
    chosen = summary.get("chosen")
    if not chosen:
        raise SlmkitError(f"{results}: no router was chosen in this run; nothing to report")
    row, kind = summary["routers"][chosen], result_kind(summary)
    doc = {"about": f"the hybrid row of a route run: {chosen} at its operating point on held-out requests "
                    f"({summary['split']['method']}, seed {summary['split']['seed']}), on a {kind} machine",
           "router": chosen, "tolerances": dict(DEFAULT_TOLERANCES),
           "figures": {f: row.get(f) for f in FIGURES}}
    write_set(out, doc, kind, ("router", "figures"))
    console.print(f"reported route figures ({kind}) written to {out}")


def check(run: dict, reported: dict, where: str = "reported") -> list[Check]:
    """The reported router's figures against the same router's row in a route.json."""
    router = reported.get("router")
    row = (run.get("routers") or {}).get(router)
    if row is None:
        raise StageFailed(f"route --check: the run has no router '{router}' (it has: "
                          f"{', '.join(run.get('routers') or {}) or 'none'})")
    tol = {**DEFAULT_TOLERANCES, **(reported.get("tolerances") or {})}
    if not isinstance(reported.get("figures"), dict):
        raise SlmkitError(f"{where}: expected 'figures', an object of figure -> value")
    out = []
    for fig, value in reported["figures"].items():
        measured, margin = row.get(fig), _margin(fig, value, row.get("requests"), tol)
        ok = value is None and measured is None or (
            value is not None and measured is not None and abs(measured - value) <= margin + 1e-9)
        out.append(Check(router, fig, value, measured, f"± {margin:.4g}", ok))
    return out


def run_check(reported: Path, results: Path, console: Console) -> list[Check]:
    want, got = _read(reported, "reported route figures"), _read(results, "route.json")
    kind, why, checks = check_by_kind(want, got, str(reported), lambda view: check(got, view, str(reported)),
                                      lambda c: not c.ok)
    print_checks(checks, console, title=f"route --check ({why})")
    router = checks[0].target if checks else None
    if router and got.get("chosen") != router:
        console.print(f"[yellow]note:[/] the reported router is {router}; this run chose {got.get('chosen')} "
                      f"(not held: a share a few requests off can move a router across the goal)")
    verdict(checks, "route --check")
    console.print(f"[green]✓[/] route figures reproduce ({len(checks)} figures, {kind})")
    return checks


def _margin(figure: str, reported: float | None, requests: int | None, tol: dict) -> float:
    """The figure's absolute margin, or for a share `share_stderr` binomial standard errors where wider."""
    margin = tol.get(f"{figure}_abs", 0.05)
    if figure in SHARES and reported is not None and requests:
        p = min(max(reported, 0.0), 1.0)
        margin = max(margin, tol.get("share_stderr", 0) * math.sqrt(p * (1 - p) / requests))
    return round(margin, 4)
