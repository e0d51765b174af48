"""`slmkit route --check REPORTED.json`: does a route run back up the hybrid row someone reported?

The row is the chosen router at its operating point on held-out requests: its quality, its share of remote
calls and its cost cut against all-remote, each held within an absolute margin. They are counts over a few
dozen requests, so a reproduction whose models differ in their last bits may move a request or two (about
0.016 each over 64): the margins are a few requests wide.

    {"router": "cascade", "tolerances": {"quality_abs": 0.05, "remote_share_abs": 0.05, ...},
     "figures": {"quality": 0.74, "remote_share": 0.28, "remote_spend_ratio": 0.3}}
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from slmkit.pipelines.core.errors import SlmkitError, StageFailed

# cost_cut is reported but not held: its local part is machine time, which moves with the machine.
FIGURES = ("quality", "remote_share", "remote_spend_ratio")
DEFAULT_TOLERANCES = {f"{f}_abs": 0.05 for f in FIGURES}


def _read(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlmkitError(f"{path}: not a readable {what}: {exc}") from None


def write_reported(results: Path, out: Path, console: Console) -> None:
    summary = _read(results, "route.json")
    chosen = summary.get("chosen")
    if not chosen:
        raise SlmkitError(f"{results}: no router was chosen in this run; nothing to report")
    row = summary["routers"][chosen]
    doc = {"about": f"the hybrid row of a route run: {chosen} at its operating point on held-out requests "
                    f"({summary['split']['method']}, seed {summary['split']['seed']})",
           "router": chosen, "tolerances": dict(DEFAULT_TOLERANCES),
           "figures": {f: row.get(f) for f in FIGURES}}
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"reported route figures written to {out}")


def run_check(reported: Path, results: Path, console: Console) -> None:
    want, got = _read(reported, "reported route figures"), _read(results, "route.json")
    router = want.get("router")
    row = (got.get("routers") or {}).get(router)
    if row is None:
        raise StageFailed(f"route --check: the run has no router '{router}' (it has: "
                          f"{', '.join(got.get('routers') or {}) or 'none'})")
    tol = {**DEFAULT_TOLERANCES, **(want.get("tolerances") or {})}
    table = Table(title=f"route --check: {router} against {reported}")
    for h in ("figure", "reported", "measured", "margin", "ok"):
        table.add_column(h)
    misses = []
    for fig, value in (want.get("figures") or {}).items():
        measured, margin = row.get(fig), tol.get(f"{fig}_abs", 0.05)
        ok = value is None and measured is None or (
            value is not None and measured is not None and abs(measured - value) <= margin + 1e-9)
        table.add_row(fig, str(value), str(measured), f"±{margin}", "✓" if ok else "✗")
        if not ok:
            misses.append(f"{fig}: reported {value}, measured {measured} (±{margin})")
    if got.get("chosen") != router:
        misses.append(f"chosen router: reported {router}, this run chose {got.get('chosen')}")
    console.print(table)
    if misses:
        raise StageFailed("route --check: " + "; ".join(misses))
    console.print(f"[green]✓[/] route figures reproduce ({len(want.get('figures') or {})} figures)")
