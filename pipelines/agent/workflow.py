"""A workflow file: its tools, its tasks, the instructions the model gets in lm mode, and the controller that runs
the same workflow in code mode.

    name: support
    instructions: You resolve refund tickets ...     # lm mode: the model plans with these and the tools
    tools:
      lookup_order: slmkit.recipes.support_tools:lookup_order      # schema from the type hints
      escalate: {ref: my_tools:escalate, description: ..., parameters: {type: object, ...}}   # declared
    tasks: data/agent_tasks.jsonl                    # relative to this file; or a list of tasks inline
    controller:                                      # code mode: the flow is this graph, not the model's
      start: read_ticket
      steps:
        read_ticket: {model: {prompt: "... {request}", schema: {...}}, save: ticket, retries: 1, next: lookup}
        lookup: {tool: lookup_order, args: {order_id: $ticket.order_id}, save: order, on_error: unknown}
        decide: {branch: {if: $policy.eligible, then: refund, else: escalate}}
        ...

A task: {id, request, initial_state, expected_state, expected_calls?}. `expected_state` may name only fields of
the initial state; a task succeeds when each of them ends equal to the expected value. `expected_calls` (name and
the arguments that must match; others are free) scores call accuracy.

In a step, `args` values and `if` that start with `$` name a value: `$request`, `$state.FIELD`, a saved result
(`$ticket.order_id`) or `$error` (the last failure's message); prompts take `{the.same.names}`. A step's
`next` defaults to `end`. Every problem is an SlmkitError naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmkit.pipelines.agent.tools import Tool, check_schema, load_tool
from slmkit.pipelines.core.errors import SlmkitError

END = "end"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ToolEntry(_Strict):
    ref: str = Field(description="module:function")
    description: str | None = None
    parameters: dict | None = Field(None, description="JSON Schema of the arguments (default: from type hints)")


class ModelStep(_Strict):
    prompt: str = Field(description="the user message; {name.path} is replaced by that value")
    schema_: dict = Field(alias="schema", description="JSON Schema the model's answer is held to")
    system: str | None = None
    max_tokens: int = Field(192, gt=0)


class Branch(_Strict):
    if_: str = Field(alias="if", description="$name.path: truthy goes to `then`, else to `else`")
    then: str
    else_: str = Field(alias="else")


class Step(_Strict):
    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    model: ModelStep | None = None
    branch: Branch | None = None
    save: str | None = Field(None, description="name the step's result is kept under")
    next: str = END
    retries: int = Field(0, ge=0, description="run the step again this many times when it fails")
    on_error: str | None = Field(None, description="the step to go to once retries are spent (default: stop)")

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("tool", "model", "branch") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step is exactly one of tool, model or branch (got {', '.join(kinds) or 'none'})")
        return self

    def targets(self) -> list[str]:
        """The steps this one may go to."""
        if self.branch is not None:
            return [self.branch.then, self.branch.else_]
        return [self.next] + ([self.on_error] if self.on_error else [])


class Controller(_Strict):
    start: str
    steps: dict[str, Step]
    max_steps: int = Field(50, gt=0, description="steps run per task before the controller stops (loops)")


class Task(_Strict):
    id: str
    request: str
    initial_state: dict[str, Any] = Field(default_factory=dict)
    expected_state: dict[str, Any]
    expected_calls: list[dict[str, Any]] | None = None
    kind: str | None = None  # a label for reports (e.g. full_refund)


class WorkflowFile(_Strict):
    name: str
    description: str | None = None
    instructions: str = Field("", description="lm mode: the system message, before the tool list")
    tools: dict[str, str | ToolEntry]
    state: dict[str, Any] = Field(default_factory=dict, description="initial state every task starts from "
                                                                     "(a task's initial_state is laid over it)")
    tasks: str | list[Task]
    controller: Controller | None = None


class Workflow:
    """A loaded workflow: tools imported, tasks read and checked, controller checked against both."""

    def __init__(self, path: Path, spec: WorkflowFile, tools: dict[str, Tool], tasks: list[Task]):
        self.path, self.spec, self.tools, self.tasks = path, spec, tools, tasks
        self.name = spec.name
        self.controller = spec.controller

    def initial_state(self, task: Task) -> dict:
        return json.loads(json.dumps({**self.spec.state, **task.initial_state}))  # a fresh deep copy per run


def _problems(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "str")))
        lines.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(lines)


def load_workflow(path: str | Path) -> Workflow:
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"{path}: no workflow file there")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SlmkitError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SlmkitError(f"{path}: a workflow is a mapping (name, tools, tasks, controller)")
    try:
        spec = WorkflowFile.model_validate(data)
    except ValidationError as err:
        raise SlmkitError(f"{path}: {_problems(err)}") from None
    tools = {}
    for name, entry in spec.tools.items():
        entry = ToolEntry(ref=entry) if isinstance(entry, str) else entry
        tools[name] = load_tool(name, entry.ref, f"{path}: tools.{name}", entry.parameters, entry.description)
    tasks = _load_tasks(path, spec)
    _check_tasks(path, spec, tools, tasks)
    if spec.controller is not None:
        _check_controller(path, spec.controller, tools)
    return Workflow(path, spec, tools, tasks)


def workflow_dependencies(path: str | Path) -> list[Path]:
    """The files a workflow reads besides itself: its tasks file and its tools' modules' source files.

    For the agent stage's fingerprint: a changed task or tool must rerun the stage. Read leniently, without
    importing anything: a broken workflow is load_workflow's to report, with its own errors."""
    import importlib.util

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(data, dict):
        return []
    found: list[Path] = []
    if isinstance(data.get("tasks"), str):
        found.append((path.parent / data["tasks"]).resolve())
    for entry in (data.get("tools") or {}).values():
        ref = entry.get("ref") if isinstance(entry, dict) else entry
        module = str(ref).partition(":")[0]
        try:
            spec = importlib.util.find_spec(module) if module else None
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            found.append(Path(spec.origin))
    return sorted({p for p in found if p.exists()})


def _load_tasks(path: Path, spec: WorkflowFile) -> list[Task]:
    if isinstance(spec.tasks, list):
        return spec.tasks
    from slmkit.pipelines.core.jsonl import records

    file = (path.parent / spec.tasks).resolve()
    if not file.is_file():
        raise SlmkitError(f"{path}: tasks: no file at {file}")
    tasks = []
    for rec in records(file):
        try:
            tasks.append(Task.model_validate(rec.value))
        except ValidationError as err:
            raise SlmkitError(f"{rec.where}: {_problems(err)}") from None
    if not tasks:
        raise SlmkitError(f"{path}: tasks: {file} holds no tasks")
    return tasks


def _check_tasks(path: Path, spec: WorkflowFile, tools: dict[str, Tool], tasks: list[Task]) -> None:
    where = path if isinstance(spec.tasks, list) else (path.parent / spec.tasks).resolve()
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise SlmkitError(f"{where}: task '{task.id}': two tasks have this id")
        seen.add(task.id)
        fields = {**spec.state, **task.initial_state}
        unknown = sorted(set(task.expected_state) - set(fields))
        if unknown:
            raise SlmkitError(f"{where}: task '{task.id}': expected_state.{unknown[0]} is not a field of the state "
                              f"(fields: {', '.join(sorted(fields)) or 'none'})")
        for i, call in enumerate(task.expected_calls or []):
            if call.get("name") not in tools:
                raise SlmkitError(f"{where}: task '{task.id}': expected_calls[{i}].name '{call.get('name')}' is "
                                  f"not a tool (tools: {', '.join(tools)})")


def _check_controller(path: Path, ctl: Controller, tools: dict[str, Tool]) -> None:
    names = set(ctl.steps)
    if ctl.start not in names:
        raise SlmkitError(f"{path}: controller.start: no step '{ctl.start}' (steps: {', '.join(ctl.steps)})")
    for name, step in ctl.steps.items():
        key = f"{path}: controller.steps.{name}"
        if step.tool is not None and step.tool not in tools:
            raise SlmkitError(f"{key}.tool: no tool '{step.tool}' (tools: {', '.join(tools)})")
        for target in step.targets():
            if target != END and target not in names:
                raise SlmkitError(f"{key}: goes to '{target}', which is no step (steps: {', '.join(ctl.steps)}, "
                                  f"or {END})")
        if step.model is not None:
            check_schema(step.model.schema_, f"{key}.model.schema")
        if step.tool is not None:
            props = tools[step.tool].parameters.get("properties", {})
            extra = sorted(set(step.args) - set(props))
            if extra and tools[step.tool].parameters.get("additionalProperties") is False:
                raise SlmkitError(f"{key}.args.{extra[0]}: tool '{step.tool}' has no argument '{extra[0]}' "
                                  f"(it takes: {', '.join(props)})")
