"""`slmkit agent --check REPORTED.json --results agent.json`: does an agent run back up the figures reported?

Held per row (suite · target · mode): task success, pass^k at the run's k, the share of valid calls and call
accuracy, each within an absolute margin. They are rates over a dozen or so runs, most of them sampled: a
reproduction on another CPU, whose logits differ in their last bits, can take another path at a near-tie
token and turn a run or two. The default margin (0.25) is three runs of twelve; it still fails a loop that
broke (a row dropping to 0) or a grammar that lets invalid calls through. Latency, tokens and cost move with
the machine and the load and are reported, not held.

    {"k": 2, "tolerances": {"rate_abs": 0.25},
     "rows": {"workflow:support-refunds|fine-tuned Q4_K_M|code": {"success": 0.83, "pass^2": 0.67, ...}}}

with `rows` under `machines.KIND` instead, one set per kind of machine (core/reported.py).
"""

from __future__ import annotations

from pathlib import Path

from slmkit.pipelines.bench.check import Check, load, print_checks, verdict
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.reported import check_by_kind, result_kind, write_set

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


def _load(path: Path, what: str, key: str | tuple[str, ...]) -> dict:
    return load(path, what, key, f" ({what})")


def write_reported(results: Path, out: Path, console) -> dict:
    run = _load(results, "--results", "rows")
    k = int(run.get("k", 1))
    kind = result_kind(run)
    doc = {"about": f"figures reported from an agent run of {run.get('date')} on "
                    f"{run.get('machine', {}).get('cpus')} CPUs ({kind}): k = {k}, temperature "
                    f"{run.get('temperature')}",
           "k": k, "tolerances": dict(DEFAULT_TOLERANCES), "meaning": dict(MEANING),
           "rows": {_key(r): row_figures(r, k) for r in run["rows"]}}
    write_set(out, doc, kind, ("rows",))
    console.print(f"reported agent figures ({kind}) written to {out}")
    return doc


def check(run: dict, reported: dict, where: str = "reported") -> list[Check]:
    tol = {**DEFAULT_TOLERANCES, **(reported.get("tolerances") or {})}
    k = int(reported.get("k", 1))
    if int(run.get("k", 1)) != k:
        raise SlmkitError(f"{where}: reported for k = {k}, but the run used k = {run.get('k')}; pass^k differ")
    if not isinstance(reported.get("rows"), dict):
        raise SlmkitError(f"{where}: expected 'rows', an object of suite|target|mode -> figures")
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
    reported, run = _load(reported_path, "--check", ("rows", "machines")), _load(results_path, "--results", "rows")
    where = str(reported_path)
    kind, why, checks = check_by_kind(reported, run, where, lambda view: check(run, view, where), lambda c: not c.ok)
    print_checks(checks, console, title=f"agent --check ({why})")
    verdict(checks, "agent --check")
    console.print(f"[green]✓[/] all {len(checks)} reported agent figures reproduced within tolerance ({kind})")
    return checks
