"""What one run of one task leaves behind, whichever runner ran it: the calls, the model's cost, how it ended."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from slmkit.pipelines.backends import Completion, Request, RequestError

# How a run ended.
STATUSES = {
    "answered": "the model gave its final answer (lm) or the controller reached `end` (code)",
    "step_limit": "the step limit came first",
    "stopped": "the controller stopped: a step failed with no retries or on_error left",
    "request_failed": "a model request failed (the endpoint's error is in `error`)",
}


@dataclass(frozen=True)
class RunOptions:
    """How one run asks its model: every runner builds its requests through `request`, so the sampling settings
    are the same for each model call of a run, whatever the runner."""

    max_steps: int
    max_tokens: int
    temperature: float
    seed: int | None
    frequency_penalty: float = 0.0

    def request(self, messages: list[dict], schema: dict | None, max_tokens: int | None = None) -> Request:
        return Request(messages=messages, max_tokens=max_tokens or self.max_tokens, temperature=self.temperature,
                       seed=self.seed, json_schema=schema, frequency_penalty=self.frequency_penalty or None)


@dataclass
class Call:
    """One tool call as made: `valid` when it parsed and fit the tool's schema; `error` when the tool raised."""

    name: str | None
    arguments: Any
    valid: bool
    problem: str | None = None  # why it is invalid
    error: str | None = None  # what the tool raised
    result: Any = None


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)
    status: str = "answered"
    answer: str | None = None
    error: str | None = None
    steps: int = 0
    model_calls: int = 0
    invalid_outputs: int = 0  # model answers that did not parse or fit their schema
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_s: float = 0.0
    wall_s: float = 0.0
    final_state: dict = field(default_factory=dict)
    transcript: list[dict] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def ask(self, client, request: Request) -> Completion:
        """One model request, counted. A local model's own refusal (llama-cpp-python raises ValueError when the
        conversation outgrows the context) ends this run like an endpoint's error does, not the benchmark."""
        try:
            c = client.complete(request)
        except (ValueError, RuntimeError) as exc:
            raise RequestError(f"{type(exc).__name__}: {exc}") from None
        self.model_calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.model_s += c.e2e_s
        return c

    def finish(self, state: dict) -> Trace:
        self.final_state = state
        self.wall_s = time.perf_counter() - self._start
        return self

    def record(self) -> dict:
        out = asdict(self)
        out.pop("_start")
        return out


def run_tool(tool, state: dict, arguments: Any, trace: Trace) -> Call:
    """Check the arguments against the tool's schema, call it, and record the call; never raises for the tool's
    own failures (they are the result the model or the controller sees)."""
    if tool is None:
        call = Call(None, arguments, False, "no such tool")
    elif not isinstance(arguments, dict) or tool.problems(arguments):
        problems = "arguments are not an object" if not isinstance(arguments, dict) else \
            "; ".join(tool.problems(arguments))
        call = Call(tool.name, arguments, False, problems)
    else:
        call = Call(tool.name, arguments, True)
        try:
            call.result = json.loads(json.dumps(tool(state, arguments), default=str))
        except Exception as exc:  # noqa: BLE001 - a tool's failure is data for the model or the controller
            call.error = f"{type(exc).__name__}: {exc}"
    trace.calls.append(call)
    return call


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why it is not JSON)."""
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"not JSON ({exc})"


__all__ = ["STATUSES", "Call", "RequestError", "Trace", "parse_json", "run_tool"]
