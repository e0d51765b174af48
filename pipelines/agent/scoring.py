"""Scores: one run's (final state, calls against the expected ones) and a target × mode's (success, pass^k,
call validity, BFCL's error categories, abstention, calls, tokens, latency, cost).

Call accuracy uses BFCL's error categories, compared call by call in order with the task's expected calls:
  wrong_function       another tool was called where this one was expected
  missing_argument     an argument the expected call names was not given
  unexpected_argument  an argument the tool does not take
  wrong_type           an argument of the wrong JSON type (an integer for a number is fine, as in BFCL)
  wrong_value          the right type, another value
  missing_call         fewer calls than expected
An expected call lists only the arguments that must match; free text (a reply, a reason) is left out.
"""

from __future__ import annotations

import math
from typing import Any

from slmkit.pipelines.agent.trace import Call

MONEY_TOLERANCE = 0.005  # amounts are compared to the cent
CATEGORIES = ("wrong_function", "missing_argument", "unexpected_argument", "wrong_type", "wrong_value",
              "missing_call")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def same(expected: Any, got: Any) -> bool:
    """Equal as JSON values, numbers to the cent (a refund of 37.74 is 37.74 however it was computed)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(expected, got, abs_tol=MONEY_TOLERANCE)
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(same(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(a, b) for a, b in zip(expected, got, strict=True))
    return expected == got


def state_diff(expected: dict, final: dict) -> dict[str, dict]:
    """The expected fields that ended otherwise: field -> {expected, got}. Empty: the task succeeded."""
    return {k: {"expected": v, "got": final.get(k)} for k, v in expected.items() if not same(v, final.get(k))}


def call_error(expected: dict, call: Call, parameters: dict | None) -> str | None:
    """The BFCL category of one call against the expected one (None: it matches)."""
    if call.name != expected["name"]:
        return "wrong_function"
    args = call.arguments if isinstance(call.arguments, dict) else {}
    props = (parameters or {}).get("properties")
    if props is not None and any(a not in props for a in args):
        return "unexpected_argument"
    for name, want in expected.get("arguments", {}).items():
        if name not in args:
            return "missing_argument"
        got = args[name]
        numeric = {json_type(want), json_type(got)} <= {"integer", "number"}
        if json_type(want) != json_type(got) and not numeric:
            return "wrong_type"
        if not same(want, got):
            return "wrong_value"
    return None


def call_errors(expected_calls: list[dict], calls: list[Call], tools: dict) -> list[str | None]:
    """One entry per expected call: its category, or None when the call in that place matches."""
    out: list[str | None] = []
    for i, want in enumerate(expected_calls):
        if i >= len(calls):
            out.append("missing_call")
            continue
        tool = tools.get(calls[i].name)
        out.append(call_error(want, calls[i], tool.parameters if tool is not None else None))
    return out


def pass_hat_k(successes: list[list[bool]], k: int) -> float | None:
    """tau-bench's pass^k: the chance that k runs of a task, drawn from its n runs, all succeed, averaged over
    tasks (C(c, k) / C(n, k) with c successes). pass^1 is the success rate; it falls with k as runs disagree."""
    rows = [runs for runs in successes if len(runs) >= k]
    if not rows:
        return None
    return sum(math.comb(sum(r), k) / math.comb(len(r), k) for r in rows) / len(rows)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the nearest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_cost(record: dict, price: dict) -> float:
    """USD for one run: tokens at the endpoint's prices, or a local model's seconds at the machine's hourly
    price (the same split bench's cost uses)."""
    if price.get("input_per_1m") is not None or price.get("output_per_1m") is not None:
        return (record["prompt_tokens"] * (price.get("input_per_1m") or 0)
                + record["completion_tokens"] * (price.get("output_per_1m") or 0)) / 1e6
    return record["model_s"] * (price.get("hardware_usd_per_hour") or 0) / 3600


def summarize(records: list[dict], k: int, price: dict) -> dict[str, Any]:
    """One row of the table: the runs of one suite × target × mode."""
    by_task: dict[str, list[bool]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r["success"])
    calls = [c for r in records for c in r["calls"]]
    errors = [e for r in records for e in r.get("call_errors") or []]
    abstain = [r for r in records if r.get("should_abstain")]
    costs = [run_cost(r, price) for r in records]
    wins = sum(r["success"] for r in records)
    n = len(records) or 1
    row = {
        "tasks": len(by_task), "runs": len(records),
        "success": round(wins / n, 4),
        "pass_hat_k": {str(j): round(v, 4) for j in range(1, k + 1) if (v := pass_hat_k(list(by_task.values()), j))
                       is not None},
        "valid_calls": round(sum(c["valid"] for c in calls) / len(calls), 4) if calls else None,
        "tool_calls_per_task": round(len(calls) / n, 2),
        "call_accuracy": round(errors.count(None) / len(errors), 4) if errors else None,
        "call_errors": {cat: errors.count(cat) for cat in CATEGORIES if errors.count(cat)},
        "abstention": round(sum(r["abstained"] for r in abstain) / len(abstain), 4) if abstain else None,
        "model_calls_per_task": round(sum(r["model_calls"] for r in records) / n, 2),
        "tokens_per_task": round(sum(r["prompt_tokens"] + r["completion_tokens"] for r in records) / n, 1),
        "latency_s_p50": _round(percentile([r["wall_s"] for r in records], 50)),
        "latency_s_p95": _round(percentile([r["wall_s"] for r in records], 95)),
        "usd_per_task": sum(costs) / n,
        "usd_per_success": sum(costs) / wins if wins else None,
        "status": {s: sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})},
    }
    turns = sum(r.get("turns", 0) for r in records)
    if turns:  # multi-turn items: the share of turns passed, which moves before whole items do
        row["turn_success"] = round(sum(r.get("turns_passed", 0) for r in records) / turns, 4)
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
