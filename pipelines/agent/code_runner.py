"""Code agency: the workflow's controller graph decides every step; the model is asked only inside `model`
steps, each answer held to that step's JSON Schema (Request.json_schema) and checked again on arrival.

A step that fails (a tool that raises, arguments that do not fit, a model answer that does not parse or fit)
runs again up to `retries` times, then goes to `on_error`, or the run stops. A branch reads a value and goes
to `then` or `else`. The controller stops after `max_steps` steps, so a loop in the graph cannot hang a run.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slmkit.pipelines.agent.tools import schema_problems
from slmkit.pipelines.agent.trace import Trace, parse_json, run_tool
from slmkit.pipelines.agent.workflow import END, Step, Task, Workflow
from slmkit.pipelines.backends import RequestError

_REF = re.compile(r"^\$([A-Za-z_][\w.]*)$")
_TEMPLATE = re.compile(r"\{([A-Za-z_][\w.]*)\}")
_MISSING = object()


def lookup(env: dict, path: str) -> Any:
    """`a.b.c` in the run's names (request, state, saved results, error); _MISSING when it is not there."""
    node: Any = env
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def render(template: str, env: dict) -> str:
    """`{name.path}` replaced by the value (objects as JSON); an unknown name is left as written."""
    def one(m: re.Match) -> str:
        value = lookup(env, m.group(1))
        if value is _MISSING:
            return m.group(0)
        return value if isinstance(value, str) else json.dumps(value)
    return _TEMPLATE.sub(one, template)


def resolve(value: Any, env: dict) -> Any:
    """An argument: `$name.path` is that value as it is (typed); other strings are templates; containers recurse."""
    if isinstance(value, str):
        m = _REF.match(value)
        if m:
            found = lookup(env, m.group(1))
            return None if found is _MISSING else found
        return render(value, env)
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    return value


def _model_step(step: Step, env: dict, client, trace: Trace, opts) -> tuple[Any, str | None]:
    """The model's answer to a model step as a value, or (None, why it failed)."""
    m = step.model
    messages = ([{"role": "system", "content": m.system}] if m.system else []) + \
        [{"role": "user", "content": render(m.prompt, env)}]
    c = trace.ask(client, opts.request(messages, m.schema_, m.max_tokens))
    trace.transcript.append({"step": "model", "system": m.system, "prompt": messages[-1]["content"],
                             "answer": c.text})
    value, why = parse_json(c.text)
    if why is None:
        problems = schema_problems(m.schema_, value)
        why = "; ".join(problems) if problems else None
    if why is not None:
        trace.invalid_outputs += 1
        return None, f"the model's answer {why}"
    return value, None


def _tool_step(step: Step, env: dict, workflow: Workflow, state: dict, trace: Trace) -> tuple[Any, str | None]:
    call = run_tool(workflow.tools[step.tool], state, resolve(step.args, env), trace)
    trace.transcript.append({"step": "tool", "name": step.tool, "arguments": call.arguments,
                             "result": call.result, "error": call.error or call.problem})
    if not call.valid:
        return None, f"{step.tool}: invalid arguments: {call.problem}"
    if call.error:
        return None, f"{step.tool} raised {call.error}"
    return call.result, None


def run_code(workflow: Workflow, task: Task, client, opts) -> Trace:
    ctl = workflow.controller
    state = workflow.initial_state(task)
    trace = Trace()
    env: dict[str, Any] = {"request": task.request, "state": state, "error": None}
    name = ctl.start
    try:
        while name != END:
            if trace.steps >= ctl.max_steps:
                trace.status = "step_limit"
                break
            step = ctl.steps[name]
            if step.branch is not None:
                trace.steps += 1
                value = lookup(env, step.branch.if_.lstrip("$"))
                name = step.branch.then if value is not _MISSING and bool(value) else step.branch.else_
                continue
            for _attempt in range(step.retries + 1):
                trace.steps += 1
                if step.model is not None:
                    result, failure = _model_step(step, env, client, trace, opts)
                else:
                    result, failure = _tool_step(step, env, workflow, state, trace)
                if failure is None:
                    break
                env["error"] = failure
            if failure is not None:
                if step.on_error is None:
                    trace.status, trace.error = "stopped", f"step '{name}': {failure}"
                    break
                name = step.on_error
                continue
            if step.save:
                env[step.save] = result
            name = step.next
    except RequestError as exc:
        trace.status, trace.error = "request_failed", str(exc)
    if trace.status == "answered":  # the controller's last model answer (the reply, in the demo)
        trace.answer = next((t["answer"] for t in reversed(trace.transcript) if t["step"] == "model"), None)
    return trace.finish(state)
