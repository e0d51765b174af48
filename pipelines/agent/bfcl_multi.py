"""BFCL's multi-turn base set: a user asks for several things in turn, the model works each turn out with the
stateful APIs (a file system, a ticket desk, a trading bot, a car…), and a turn passes when the APIs' state
after the model's calls equals their state after BFCL's ground-truth calls, and what the ground truth's calls
returned was returned to the model too (BFCL's state and response checks).

The items, their initial states, the functions' documentation and the ground truth are bfcl-eval's data files
(data/BFCL_v4_multi_turn_base.json, data/multi_turn_func_doc/, data/possible_answer/). The APIs the calls run
against are the package's pure-Python classes (eval_checker/multi_turn_eval/func_source_code): they are the
environment, as a workflow's tools are; none of bfcl-eval's handlers or checkers is used. The classes import
only the standard library and mpmath.

Per turn: the turn's user message is added to the conversation, the model takes up to `max_steps` actions
(a tool call or `{"answer": …}`, which ends the turn; the same JSON action format as the other runners), each
call runs on the model's instances and its result is fed back; then the ground truth's calls run on a second set
of instances loaded from the same initial state, and the two sets are compared, public attributes by value.
An item succeeds when every turn passed. A turn the model ended early or whose request failed is failed; the
turns after a failed request are failed unseen.

Only lm mode: the items have no fixed workflow a controller could own, which is the point of code agency.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

from slmkit.pipelines.agent import bfcl
from slmkit.pipelines.agent.lm_runner import (
    action_schema,
    parse_action,
    record_invalid,
    system_message,
)
from slmkit.pipelines.agent.tools import Tool
from slmkit.pipelines.agent.trace import Call, Trace
from slmkit.pipelines.backends import RequestError
from slmkit.pipelines.core.errors import SlmkitError

STEM = "multi_turn_base"
SOURCE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
# BFCL's class name -> the module that defines it and its documentation file (both named by the module).
CLASSES = {
    "GorillaFileSystem": "gorilla_file_system", "MathAPI": "math_api", "MessageAPI": "message_api",
    "TwitterAPI": "posting_api", "TicketAPI": "ticket_api", "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking", "VehicleControlAPI": "vehicle_control",
}
SYSTEM = ("You operate the tools below for the user, one call at a time. Do what the user asks in this turn, "
          "reading each call's result; when it is done, give a short final answer for the turn.")
_PREAMBLE = "Tool description: "  # BFCL's descriptions open with the API's blurb, then this


@dataclass
class MultiItem:
    id: str
    subset: str
    turns: list[str]  # each turn's user text
    initial_config: dict
    classes: list[str]
    functions: list[dict]  # BFCL function docs shown to the model
    ground_truth: list[list[str]]  # per turn, the calls as Python call expressions


def load_items(limit: int | None = None, where: str = "agent.bfcl") -> list[MultiItem]:
    root = bfcl.data_dir(where)
    rows = bfcl._read(root / f"BFCL_v4_{STEM}.json", where)[:limit]
    answers = {a["id"]: a["ground_truth"] for a in bfcl._read(root / "possible_answer" / f"BFCL_v4_{STEM}.json",
                                                               where)}
    docs: dict[str, list[dict]] = {}
    items = []
    for r in rows:
        unknown = [c for c in r["involved_classes"] if c not in CLASSES]
        if unknown:
            raise SlmkitError(f"{where}: {r['id']} uses {', '.join(unknown)}, which slmkit does not load")
        excluded = set(r.get("excluded_function") or [])
        functions = []
        for cls in r["involved_classes"]:
            if cls not in docs:
                docs[cls] = bfcl._read(root / "multi_turn_func_doc" / f"{CLASSES[cls]}.json", where)
            functions += [f for f in docs[cls] if f["name"] not in excluded]
        turns = ["\n".join(m["content"] for m in turn if m.get("role") == "user") for turn in r["question"]]
        items.append(MultiItem(r["id"], "multi_turn", turns, r["initial_config"], list(r["involved_classes"]),
                               functions, answers[r["id"]]))
    return items


# ---------------------------------------------------------------- the environment

def environment(item: MultiItem) -> dict[str, Any]:
    """A fresh instance of each class the item involves, loaded with its initial state."""
    env = {}
    for cls in item.classes:
        instance = getattr(importlib.import_module(f"{SOURCE}.{CLASSES[cls]}"), cls)()
        if hasattr(instance, "_load_scenario"):
            instance._load_scenario(copy.deepcopy(item.initial_config.get(cls, {})))
        env[cls] = instance
    return env


def _method(env: dict[str, Any], name: str):
    for instance in env.values():
        fn = getattr(instance, name, None)
        if callable(fn) and not name.startswith("_"):
            return fn
    return None


def execute(env: dict[str, Any], name: str, arguments: dict) -> tuple[Any, str | None]:
    """(result, None), or (None, the error) when there is no such function or it raised. BFCL's APIs report
    most failures as a result with an "error" key; those are results, as the model sees them."""
    fn = _method(env, name)
    if fn is None:
        return None, f"no function {name}"
    try:
        return json.loads(json.dumps(fn(**arguments), default=str)), None
    except Exception as exc:  # noqa: BLE001 - the API's failure is what the model reads
        return None, f"{type(exc).__name__}: {exc}"


def parse_call(text: str, env: dict[str, Any]) -> tuple[str, dict]:
    """A ground-truth call, `mv(source='a', destination='b')` or `sort('f.pdf')`, as (name, keyword arguments):
    read with ast, literals only (nothing is evaluated); positional arguments take the method's parameter names."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a function call: {text}")
    args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    if node.args:
        fn = _method(env, node.func.id)
        names = [p for p in inspect.signature(fn).parameters] if fn else []
        for name, value in zip(names, node.args, strict=False):
            args[name] = ast.literal_eval(value)
    return node.func.id, args


def _canon(result: Any) -> str:
    return json.dumps(result, sort_keys=True, default=str)


def state(env: dict[str, Any]) -> dict[str, dict]:
    """What BFCL compares: each instance's public attributes (nested objects compare by their own __eq__)."""
    return {cls: {k: v for k, v in vars(inst).items() if not k.startswith("_")} for cls, inst in env.items()}


def state_diff(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    a, b = state(expected), state(got)
    return [f"{cls}.{k}" for cls in a for k in a[cls] if a[cls][k] != b.get(cls, {}).get(k)]


# ---------------------------------------------------------------- the runner

def tools_of(item: MultiItem) -> dict[str, Tool]:
    def shown(f: dict) -> str:
        d = f.get("description", "")
        return d.split(_PREAMBLE, 1)[1] if _PREAMBLE in d else d

    return {f["name"]: Tool(f["name"], bfcl._never_run, shown(f), bfcl.json_schema(f["parameters"]), False)
            for f in item.functions}


def run_item(item: MultiItem, mode: str, client, opts) -> tuple[Trace, list[dict]]:
    """The trace of every turn together, and per turn: passed (state equal) and the attributes that differ."""
    if mode != "lm":
        raise SlmkitError("agent.bfcl: the multi-turn items run in lm mode only (no controller owns them)")
    tools = tools_of(item)
    schema = action_schema(tools)
    env, truth = environment(item), environment(item)
    trace = Trace()
    messages = [{"role": "system", "content": system_message(SYSTEM, tools)}]
    turns: list[dict] = []
    try:
        for i, text in enumerate(item.turns):
            messages.append({"role": "user", "content": text})
            before = len(trace.calls)
            _turn(messages, tools, schema, env, client, opts, trace)
            got = [_canon(c.result) for c in trace.calls[before:] if c.valid and c.error is None]
            wanted = []
            for call in item.ground_truth[i]:
                name, args = parse_call(call, truth)
                wanted.append(_canon(execute(truth, name, args)[0]))
            # State check, and BFCL's response check: what the ground truth's calls returned was also returned
            # to the model, so a turn that only reads (ls, grep, a balance) needs the reads made.
            diff = state_diff(truth, env) + [f"result of {c}" for c, r in zip(item.ground_truth[i], wanted,
                                                                               strict=True) if r not in got]
            turns.append({"turn": i, "passed": not diff, "differs": diff})
    except RequestError as exc:
        trace.status, trace.error = "request_failed", str(exc)
    trace.transcript = messages
    turns += [{"turn": j, "passed": False, "differs": ["not reached"]} for j in range(len(turns), len(item.turns))]
    return trace.finish({}), turns


def _turn(messages, tools, schema, env, client, opts, trace: Trace) -> None:
    for _ in range(opts.max_steps):
        trace.steps += 1
        c = trace.ask(client, opts.request(messages, schema))
        messages.append({"role": "assistant", "content": c.text})
        action, why = parse_action(c.text, schema)
        if action is None:
            messages.append({"role": "user", "content": record_invalid(trace, c.text, why)})
            continue
        if "answer" in action:
            return
        name, args = action["tool"], action["arguments"]
        result, error = execute(env, name, args)
        trace.calls.append(Call(name, args, True, error=error, result=result))
        messages.append({"role": "user", "content": f"{name} failed: {error}" if error else
                         f"Result of {name}: {json.dumps(result)}"})
    trace.status = "step_limit"  # this turn ran out of steps; the next turn still starts


def score(item: MultiItem, trace: Trace, turns: list[dict]) -> dict[str, Any]:
    passed = sum(t["passed"] for t in turns)
    return {"success": passed == len(turns), "turns": len(turns), "turns_passed": passed, "turn_results": turns,
            "should_abstain": False, "abstained": not trace.calls, "call_errors": []}
