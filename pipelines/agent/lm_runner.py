"""Language-model agency: the model sees the tools and the conversation and decides each step itself.

Each turn the model answers with one JSON object, a tool call `{"tool": NAME, "arguments": {...}}` or its final
answer `{"answer": TEXT}`. The format is a JSON Schema (one branch per tool, with that tool's own argument
schema, and one for the answer) sent as Request.json_schema, so a llama.cpp model is held to it by a grammar
and an endpoint gets it as `response_format`; the answer is checked again on arrival, since an endpoint may
not enforce it. This is the JSON route the issue allows where a backend has no native tool calling: the same
format on every backend keeps the comparison about who holds the control flow, not about chat templates.

The runner executes each valid call and feeds back its result (or the tool's error); an answer that does not
parse or fit is counted invalid and the model is told why. It stops at the final answer or after `max_steps`
model turns, whichever comes first.
"""

from __future__ import annotations

import json

from slmkit.pipelines.agent.tools import Tool, schema_problems
from slmkit.pipelines.agent.trace import Call, Trace, parse_json, run_tool
from slmkit.pipelines.agent.workflow import Task, Workflow
from slmkit.pipelines.backends import RequestError

# No maxLength: llama.cpp expands a bounded repetition into that many nested rules, and sampling under it slows
# to seconds per token (a 400-character bound took a turn from 3 s to over 2 minutes); max_tokens bounds it.
ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}
FORMAT = ("Answer with one JSON object and nothing else: either a tool call\n"
          '{"tool": "<tool name>", "arguments": {<the arguments>}}\n'
          'or, when the task is done (or no tool fits it), your final answer\n{"answer": "<text>"}')


def action_schema(tools: dict[str, Tool], answer: bool = True) -> dict:
    """One branch per tool (its name as a constant, its own arguments' schema) and one for the final answer."""
    branches = [{"type": "object", "properties": {"tool": {"const": name}, "arguments": tool.parameters},
                 "required": ["tool", "arguments"], "additionalProperties": False}
                for name, tool in tools.items()]
    return {"anyOf": branches + ([ANSWER] if answer else [])}


def system_message(instructions: str, tools: dict[str, Tool]) -> str:
    listing = "\n".join(f"- {name}: {t.description}\n  arguments (JSON Schema): {json.dumps(t.parameters)}"
                        for name, t in tools.items())
    return f"{instructions}\n\nTools:\n{listing}\n\n{FORMAT}".lstrip()


def parse_action(text: str, schema: dict) -> tuple[dict | None, str | None]:
    """The action in a model's answer, or (None, why it is not a valid one)."""
    value, why = parse_json(text)
    if why is None:
        problems = schema_problems(schema, value)
        if problems and isinstance(value, dict) and "tool" in value:
            problems = [f"no tool call of this shape ({'; '.join(problems)})"]
        why = "; ".join(problems) if problems else None
    return (value, None) if why is None else (None, why)


def run_lm(workflow: Workflow, task: Task, client, opts) -> Trace:
    tools = workflow.tools
    schema = action_schema(tools)
    state = workflow.initial_state(task)
    trace = Trace()
    messages = [{"role": "system", "content": system_message(workflow.spec.instructions, tools)},
                {"role": "user", "content": task.request}]
    trace.status = "step_limit"
    try:
        while trace.steps < opts.max_steps:
            trace.steps += 1
            c = trace.ask(client, opts.request(messages, schema))
            messages.append({"role": "assistant", "content": c.text})
            action, why = parse_action(c.text, schema)
            if action is None:
                messages.append({"role": "user", "content": record_invalid(trace, c.text, why)})
                continue
            if "answer" in action:
                trace.status, trace.answer = "answered", action["answer"]
                break
            call = run_tool(tools.get(action["tool"]), state, action["arguments"], trace)
            messages.append({"role": "user", "content": _feedback(call)})
    except RequestError as exc:
        trace.status, trace.error = "request_failed", str(exc)
    trace.transcript = messages
    return trace.finish(state)


def record_invalid(trace: Trace, text: str, why: str) -> str:
    """Count an answer that is no valid action as an invalid call (of the tool it names, where it names one) and
    return what the model is told about it."""
    trace.invalid_outputs += 1
    trace.calls.append(Call(_named_tool(text), None, False, why))
    return f"That was not a valid answer: {why}. {FORMAT}"


def _named_tool(text: str) -> str | None:
    """The tool an invalid answer meant to call, where it says (for the call-accuracy categories)."""
    value, _ = parse_json(text)
    return value.get("tool") if isinstance(value, dict) and isinstance(value.get("tool"), str) else None


def _feedback(call: Call) -> str:
    """What the model reads after a call: the result, the tool's error, or why the call was refused."""
    if not call.valid:
        return f"The call to {call.name} was refused: {call.problem}."
    if call.error:
        return f"{call.name} failed: {call.error}"
    return f"Result of {call.name}: {json.dumps(call.result)}"

