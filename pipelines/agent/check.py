"""`slmkit agent --check REPORTED.json --results agent.json`: does an agent run back up the figures reported?

Held per row (suite · target · mode): task success, pass^k at the run's k, the share of valid calls and call
accuracy, each within an absolute margin. They are rates over a dozen or so runs, most of them sampled: a
reproduction on another CPU, whose logits differ in their last bits, can take another path at a near-tie
token and turn a run or two. The default margin (0.25) is three runs of twelve; it still fails a loop that
broke (a row dropping to 0) or a grammar that lets invalid calls through. Latency, tokens and cost move with
the machine and the load and are reported, not held.

    {"k": 2, "tolerances": {"rate_abs": 0.25},
     "rows": {"workflow:support-refunds|fine-tuned Q4_K_M|code": {"success": 0.83, "pass^2": 0.67, ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.pipelines.bench.check import Check, load, print_checks, verdict
from slmkit.pipelines.core.errors import SlmkitError

DEFAULT_TOLERANCES = {"rate_abs": 0.25}
MEANING = {
    "success": "share of runs whose final state equals the task's expected one",
    "pass^k": "share of tasks that succeeded in all k of their runs (the k of this file)",
    "valid_calls": "share of the model's tool calls that parsed and fit the tool's schema",
    "call_accuracy": "share of expected calls matched (function, arguments, values), BFCL's categories",
}


def _key(row: dict) -> str:
    return f"{row['suite']}|{row['target']}|{row['mode']}"


def row_figures(row: dict, k: int) -> dict[str, float | None]:
    return {"success": row.get("success"), f"pass^{k}": (row.get("pass_hat_k") or {}).get(str(k)),
            "valid_calls": row.get("valid_calls"), "call_accuracy": row.get("call_accuracy")}


def _load(path: Path, what: str, key: str) -> dict:
    return load(path, what, key, f" ({what})")


def write_reported(results: Path, out: Path, console) -> dict:
    run = _load(results, "--results", "rows")
    k = int(run.get("k", 1))
    doc = {"about": f"figures reported from an agent run of {run.get('date')} on "
                    f"{run.get('machine', {}).get('cpus')} CPUs: k = {k}, temperature {run.get('temperature')}",
           "k": k, "tolerances": dict(DEFAULT_TOLERANCES), "meaning": dict(MEANING),
           "rows": {_key(r): row_figures(r, k) for r in run["rows"]}}
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"reported agent figures written to {out}")
    return doc


def check(run: dict, reported: dict, where: str = "reported") -> list[Check]:
    tol = {**DEFAULT_TOLERANCES, **(reported.get("tolerances") or {})}
    k = int(reported.get("k", 1))
    if int(run.get("k", 1)) != k:
        raise SlmkitError(f"{where}: reported for k = {k}, but the run used k = {run.get('k')}; pass^k differ")
    rows = {_key(r): r for r in run["rows"]}
    out: list[Check] = []
    for key, figs in reported["rows"].items():
        if not isinstance(figs, dict):
            raise SlmkitError(f"{where}: rows.{key} must be an object of figures")
        measured = row_figures(rows[key], k) if key in rows else {}
        for figure, want in figs.items():
            if figure not in row_figures({}, k):
                raise SlmkitError(f"{where}: rows.{key}.{figure}: not a figure agent checks "
                                  f"({', '.join(row_figures({}, k))})")
            got = measured.get(figure)
            if want is None and got is None:  # e.g. no calls were expected: nothing to hold
                continue
            ok = want is not None and got is not None and abs(got - want) <= tol["rate_abs"] + 1e-9
            out.append(Check(key, figure, want, got, f"± {tol['rate_abs']}", ok))
    return out


def run_check(reported_path: Path, results_path: Path, console) -> list[Check]:
    reported = _load(reported_path, "--check", "rows")
    checks = check(_load(results_path, "--results", "rows"), reported, where=str(reported_path))
    print_checks(checks, console, title="agent --check")
    verdict(checks, "agent --check")
    console.print(f"[green]✓[/] all {len(checks)} reported agent figures reproduced within tolerance")
    return checks
