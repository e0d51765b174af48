"""BFCL's public function-calling items, read offline from the `bfcl-eval` package's data files, and slmkit's
own checker of a call against BFCL's possible answers, written from BFCL's published AST rules.

Only the package's data is read (data/BFCL_v4_*.json and data/possible_answer/), never its code, so it is
installed without its dependencies (`pip install --no-deps bfcl-eval`, done by `make setup`). The subsets:

  simple       one function, one call (BFCL's simple_python)
  multiple     several functions, one call to the right one
  irrelevance  no function fits: the right answer is no call (abstention)

Both modes: `lm` gives the model the functions and lets it call one or answer (the same action format as the
workflow runner); `code` lets a controller split the job: the model first picks a function or "none" (an enum),
then fills that function's arguments under its own schema.

The checker (BFCL's rules): the function name must match; every required parameter be given and no parameter
outside the function's and the possible answer's; each value of its declared type (an integer passes for a
float); strings compared after dropping spaces and `,./-_*^` and lower-casing; lists and dicts element by
element the same way (a list's items of their exact type: BFCL turns an integer into a float only at the top
level); any other value must be one of the possible values; an optional parameter the possible
answer lists without "" must be given. BFCL's error kinds map to slmkit's categories (scoring.CATEGORIES).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.pipelines.agent.lm_runner import action_schema, parse_action
from slmkit.pipelines.agent.tools import Tool
from slmkit.pipelines.agent.trace import Call, Trace
from slmkit.pipelines.backends import RequestError
from slmkit.pipelines.core.errors import SlmkitError

# slmkit's subset name -> BFCL v4's file stem; whether the item has a ground-truth call (irrelevance: none).
SUBSETS = {"simple": ("simple_python", True), "multiple": ("multiple", True), "irrelevance": ("irrelevance", False)}
# BFCL's parameter types -> JSON Schema (BFCL writes Python's names); `any` takes any value.
TYPES = {"string": "string", "integer": "integer", "float": "number", "number": "number", "boolean": "boolean",
         "array": "array", "tuple": "array", "dict": "object", "object": "object"}
_PY = {"string": str, "integer": int, "float": float, "number": float, "boolean": bool, "array": list,
       "tuple": list, "dict": dict, "object": dict}
_STRIP = re.compile(r"[ ,./\-_*^]")


@dataclass
class Item:
    id: str
    subset: str
    question: str
    functions: list[dict]
    ground_truth: list[dict] | None  # [{name: {param: [possible values]}}]; None: no call is right


def data_dir(where: str = "agent.bfcl") -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("bfcl_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SlmkitError(f"{where}: the bfcl-eval package is not installed; install it without its "
                          "dependencies: pip install --no-deps bfcl-eval (make setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read(path: Path, where: str) -> list[dict]:
    if not path.is_file():
        raise SlmkitError(f"{where}: bfcl-eval has no data file {path.name} (a release without it?)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_items(subset: str, limit: int | None = None, where: str = "agent.bfcl") -> list[Item]:
    if subset not in SUBSETS:
        raise SlmkitError(f"{where}.subsets: no subset '{subset}' (known: {', '.join(SUBSETS)})")
    stem, has_answer = SUBSETS[subset]
    root = data_dir(where)
    rows = _read(root / f"BFCL_v4_{stem}.json", where)[:limit]
    answers = {a["id"]: a["ground_truth"] for a in _read(root / "possible_answer" / f"BFCL_v4_{stem}.json", where)} \
        if has_answer else {}
    items = []
    for r in rows:
        turn = r["question"][0]  # single-turn subsets: one turn of one or more messages
        question = "\n".join(m["content"] for m in turn if m.get("role") == "user")
        items.append(Item(r["id"], subset, question, r["function"], answers.get(r["id"]) if has_answer else None))
    return items


# ---------------------------------------------------------------- the functions as tools

def json_schema(params: Any) -> Any:
    """BFCL's parameter description (Python type names, `dict` for objects) as JSON Schema."""
    if isinstance(params, list):
        return [json_schema(p) for p in params]
    if not isinstance(params, dict):
        return params
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "type":
            if value in TYPES:
                out["type"] = TYPES[value]
        elif key == "properties":
            out["properties"] = {name: json_schema(p) for name, p in value.items()}
        elif key in ("items", "additionalProperties", "anyOf"):
            out[key] = json_schema(value)
        elif key in ("required", "enum", "description"):
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out["additionalProperties"] = False
    return out


def tools_of(item: Item) -> dict[str, Tool]:
    """The item's functions as tools that are shown and checked, never run."""
    return {f["name"]: Tool(f["name"], _never_run, f.get("description", ""), json_schema(f["parameters"]), False)
            for f in item.functions}


def _never_run(**_: Any) -> None:
    raise RuntimeError("BFCL's functions are only checked, never run")


# ---------------------------------------------------------------- the checker

def standardize(text: str) -> str:
    return _STRIP.sub("", text).lower().replace("'", '"')


def _norm(value: Any) -> Any:
    return standardize(value) if isinstance(value, str) else value


def _type_ok(value: Any, declared: str | None, top: bool = True) -> bool:
    """BFCL's type rule: the exact Python type; an integer passes for a float only at the top level (BFCL
    converts a top-level int, and checks the items of a list without converting)."""
    if declared is None or declared == "any" or declared not in _PY:
        return True
    want = _PY[declared]
    if want is float and type(value) is int and top:
        return True
    return type(value) is want


def _dict_ok(value: dict, options: list) -> bool:
    for option in options:
        if not isinstance(option, dict):
            continue
        if all(k in option and _norm(v) in [_norm(o) for o in option[k]] for k, v in value.items()) and \
                all(k in value or "" in opts for k, opts in option.items()):
            return True
    return False


def _value_ok(value: Any, options: list, declared: str | None) -> bool:
    if isinstance(value, str):
        return standardize(value) in [standardize(o) for o in options if isinstance(o, str)]
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return any(isinstance(o, list) and len(o) == len(value) and
                       all(_dict_ok(v, [d]) for v, d in zip(value, o, strict=True)) for o in options)
        return [_norm(v) for v in value] in [[_norm(x) for x in o] for o in options if isinstance(o, list)]
    if isinstance(value, dict):
        return _dict_ok(value, options)
    if declared == "float" and type(value) is int:
        value = float(value)
    return value in options


def check_call(item: Item, name: str | None, arguments: Any) -> str | None:
    """The category of a call's error against the item's possible answers (None: BFCL would accept it)."""
    if item.ground_truth is None:
        return "wrong_function"  # irrelevance: any call is wrong
    (expected,) = item.ground_truth  # the simple and multiple subsets: exactly one call
    ((fname, possible),) = expected.items()
    if name != fname:
        return "wrong_function"
    doc = next(f for f in item.functions if f["name"] == fname)["parameters"]
    props, required = doc.get("properties", {}), doc.get("required", [])
    args = arguments if isinstance(arguments, dict) else {}
    if any(p not in args for p in required):
        return "missing_argument"
    for param, value in args.items():
        if param not in props or param not in possible:
            return "unexpected_argument"
        declared = props[param].get("type")
        if not _type_ok(value, declared):
            return "wrong_type"
        if declared in ("array", "tuple") and isinstance(value, list):
            inner = (props[param].get("items") or {}).get("type")
            if not all(_type_ok(v, inner, top=False) for v in value):
                return "wrong_type"
        if not _value_ok(value, possible[param], declared):
            return "wrong_value"
    if any(p not in args and "" not in opts for p, opts in possible.items()):
        return "missing_argument"  # BFCL: an optional parameter the answer needs
    return None


# ---------------------------------------------------------------- the two modes

SYSTEM = "You are given functions. Call the one that does what the user asks, with the arguments the request " \
         "gives, or answer without a call if none fits."


def run_item(item: Item, mode: str, client, opts) -> Trace:
    tools = tools_of(item)
    trace = Trace()
    try:
        (_lm if mode == "lm" else _code)(item, tools, client, opts, trace)
    except RequestError as exc:
        trace.status, trace.error = "request_failed", str(exc)
    return trace.finish({})


def _lm(item: Item, tools: dict[str, Tool], client, opts, trace: Trace) -> None:
    from slmkit.pipelines.agent.lm_runner import record_invalid, system_message

    schema = action_schema(tools)
    messages = [{"role": "system", "content": system_message(SYSTEM, tools)},
                {"role": "user", "content": item.question}]
    trace.steps = 1
    c = trace.ask(client, opts.request(messages, schema))
    trace.transcript = [*messages, {"role": "assistant", "content": c.text}]
    action, why = parse_action(c.text, schema)
    if action is None:
        record_invalid(trace, c.text, why)  # one turn only: nothing is told back
    elif "answer" in action:
        trace.answer = action["answer"]
    else:
        trace.calls.append(Call(action["tool"], action["arguments"], True))


def _code(item: Item, tools: dict[str, Tool], client, opts, trace: Trace) -> None:
    """Pick (an enum of the names and "none"), then fill (that function's own schema): each step constrained."""
    listing = "\n".join(f"- {n}: {t.description}" for n, t in tools.items())
    pick_schema = {"type": "object", "properties": {"function": {"enum": [*tools, "none"]}},
                   "required": ["function"], "additionalProperties": False}
    pick = [{"role": "user", "content": f"Functions:\n{listing}\n\nRequest: {item.question}\n\nWhich function "
                                        "does this request call? Answer \"none\" if no function fits. Answer "
                                        'as JSON: {"function": "<name>"}'}]
    trace.steps = 1
    c = trace.ask(client, opts.request(pick, pick_schema, 64))
    trace.transcript = [*pick, {"role": "assistant", "content": c.text}]
    value, why = parse_action(c.text, pick_schema)
    if value is None:
        trace.invalid_outputs += 1
        trace.calls.append(Call(None, None, False, why))
        return
    name = value["function"]
    if name == "none":
        trace.answer = "none"
        return
    tool = tools[name]
    fill = [{"role": "user", "content": f"Request: {item.question}\n\nCall {name}: {tool.description}\n"
                                        f"Arguments (JSON Schema): {json.dumps(tool.parameters)}\n\nAnswer "
                                        "with the arguments as one JSON object."}]
    trace.steps = 2
    c = trace.ask(client, opts.request(fill, tool.parameters))
    trace.transcript += [*fill, {"role": "assistant", "content": c.text}]
    args, why = parse_action(c.text, tool.parameters)
    if args is None:
        trace.invalid_outputs += 1
        trace.calls.append(Call(name, None, False, why))
    else:
        trace.calls.append(Call(name, args, True))


def score(item: Item, trace: Trace) -> dict[str, Any]:
    """success, the call's error category, and abstention, as the stage records them."""
    valid = [c for c in trace.calls if c.valid]
    if item.ground_truth is None:
        abstained = trace.status == "answered" and not trace.calls
        return {"success": abstained, "should_abstain": True, "abstained": abstained, "call_errors": []}
    if not valid:
        return {"success": False, "should_abstain": False, "abstained": not trace.calls,
                "call_errors": ["missing_call"]}
    err = check_call(item, valid[0].name, valid[0].arguments)
    return {"success": err is None and len(trace.calls) == 1, "should_abstain": False, "abstained": False,
            "call_errors": [err]}
