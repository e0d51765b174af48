"""Tools: Python callables named `module:function`, each with a JSON Schema for its arguments.

A tool's schema is declared in the workflow, or made from its type hints (str, int, float, bool, list[...],
dict, Literal[...], X | None) and its docstring (the first paragraph describes it; `name: text` lines under
`Args:` describe the arguments). A parameter named `state` is not an argument: the runner passes the task's
state, which the tool reads and changes (the final state is what a task is scored on).

Arguments are checked against the schema before a call: a call that does not fit is counted invalid and the
function never runs, whoever made it (the model in lm mode, a model step's output in code mode).
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from slmkit.pipelines.core.errors import SlmkitError

STATE_PARAM = "state"
# Python type -> JSON Schema type, for schemas made from type hints.
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


@dataclass
class Tool:
    name: str
    func: Callable[..., Any]
    description: str
    parameters: dict  # JSON Schema of the arguments object
    takes_state: bool

    def spec(self) -> dict:
        """How the model is shown the tool (the OpenAI function format)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def problems(self, arguments: Any) -> list[str]:
        """Why these arguments do not fit the schema ([] when they do)."""
        return schema_problems(self.parameters, arguments)

    def __call__(self, state: dict, arguments: dict) -> Any:
        return self.func(state, **arguments) if self.takes_state else self.func(**arguments)


def schema_problems(schema: dict, value: Any, limit: int = 3) -> list[str]:
    """A value's JSON Schema violations, as `path: message`, at most `limit`."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:limit]]


def check_schema(schema: Any, where: str) -> None:
    """SlmkitError naming `where` when `schema` is not a valid JSON Schema."""
    import jsonschema

    if not isinstance(schema, dict):
        raise SlmkitError(f"{where}: a JSON Schema is a mapping, not {type(schema).__name__}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = ".".join(map(str, exc.path))
        raise SlmkitError(f"{where}: not a valid JSON Schema{f' (at {path})' if path else ''}: {exc.message}") \
            from None


def import_ref(ref: str, where: str) -> Callable[..., Any]:
    """The callable `module:function` names; SlmkitError naming `where` when it does not import."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise SlmkitError(f"{where}: '{ref}' is not module:function (e.g. slmkit.recipes.support_tools:lookup_order)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is this key's problem
        raise SlmkitError(f"{where}: cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise SlmkitError(f"{where}: module '{module_name}' has no function '{attr}'")
    return func


def load_tool(name: str, ref: str, where: str, parameters: dict | None = None,
              description: str | None = None) -> Tool:
    func = import_ref(ref, f"{where}.ref" if parameters is not None or description else where)
    sig = inspect.signature(func)
    takes_state = STATE_PARAM in sig.parameters
    if parameters is None:
        parameters = schema_from_hints(func, where)
    else:
        check_schema(parameters, f"{where}.parameters")
    doc = inspect.getdoc(func) or ""
    return Tool(name, func, description or doc.split("\n\n")[0].replace("\n", " ").strip(), parameters,
                takes_state)


def _arg_docs(func: Callable[..., Any]) -> dict[str, str]:
    doc = inspect.getdoc(func) or ""
    _, _, args = doc.partition("Args:")
    found: dict[str, str] = {}
    for line in args.splitlines():
        m = re.match(r"\s*(\w+)(?: \([^)]*\))?:\s*(.+)", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
        elif not line.strip() and found:
            break
    return found


def type_schema(tp: Any, where: str) -> dict:
    """The JSON Schema of one annotated type."""
    origin = get_origin(tp)
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        inner = type_schema(members[0], where) if len(members) == 1 else {"anyOf": [type_schema(m, where)
                                                                                    for m in members]}
        return {"anyOf": [inner, {"type": "null"}]} if type(None) in get_args(tp) else inner
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return {"type": "array"} | ({"items": type_schema(item, where)} if item is not Any else {})
    if origin is dict or tp is dict:
        return {"type": "object"}
    if tp in JSON_TYPES:
        return {"type": JSON_TYPES[tp]}
    raise SlmkitError(f"{where}: the type {tp!r} has no JSON Schema here; declare `parameters` for this tool")


def schema_from_hints(func: Callable[..., Any], where: str) -> dict:
    """The arguments' JSON Schema from the function's type hints; required = those without a default."""
    try:
        hints = get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 - an unresolvable annotation
        raise SlmkitError(f"{where}: cannot read the type hints of {func.__name__}: {exc}") from None
    docs = _arg_docs(func)
    props: dict[str, dict] = {}
    required: list[str] = []
    for p in inspect.signature(func).parameters.values():
        if p.name == STATE_PARAM:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise SlmkitError(f"{where}: *args/**kwargs have no schema; declare `parameters` for this tool")
        if p.name not in hints:
            raise SlmkitError(f"{where}: parameter '{p.name}' of {func.__name__} has no type hint; add one or "
                              "declare `parameters`")
        props[p.name] = type_schema(hints[p.name], f"{where}: parameter '{p.name}'")
        if p.name in docs:
            props[p.name]["description"] = docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}
