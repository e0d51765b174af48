"""distill `mode: agent`: the teacher runs a tool workflow's tasks, and its successful runs become the student's
training data, so a small model can be trained for the steps of a user's own workflow.

The runs are the agent stage's own (pipelines/agent: the same tools, controller, prompts and JSON formats the
student will meet when it is measured), with the teacher as the model. A run is kept when its final state is
the task's expected one (the same check the agent stage scores); a run that went wrong teaches nothing. What
a kept run gives:

  code   every model step as a conversation of its own: the step's prompt → the teacher's JSON answer
         (read the order id, write the reply), which is what the controller asks the student;
  lm     the whole conversation: the instructions and tools, the request, each tool call the teacher made as an
         assistant turn (the JSON action), each result as the user turn after it, and the final answer.

Every teacher request goes through distill's response cache, keyed by the request (messages, schema, sampling),
so a killed or rerun stage pays for no answer twice; Ctrl-C (or SIGTERM) stops between requests.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

from pydantic import Field

from slmkit.pipelines.agent.trace import RunOptions
from slmkit.pipelines.backends import Completion, Interrupted, Request
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import InputPath, StrictModel
from slmkit.pipelines.distill.response_cache import ResponseCache, cache_key


class AgentTraceConfig(StrictModel):
    workflow: InputPath = Field(description="workflow YAML (tools, tasks, controller), as the agent stage's")
    modes: list[Literal["lm", "code"]] = Field(default_factory=lambda: ["code"], min_length=1,
                                               description="code: one record per model step of a kept run; "
                                                           "lm: one record per kept conversation")
    offset: int = Field(0, ge=0, description="skip the workflow's first N tasks (keep them for the agent "
                                             "stage's measurement)")
    limit: int | None = Field(None, gt=0, description="then use the next N tasks (null: the rest)")
    k: int = Field(1, ge=1, le=16, description="runs per task (k > 1 samples at `temperature`, seeds differ)")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature when k > 1 (k = 1: greedy)")
    max_steps: int = Field(8, gt=0, description="lm mode: teacher turns per task")
    max_tokens: int = Field(192, gt=0, description="lm mode: answer length limit per turn")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="on every teacher call, as the agent stage's")


class CachingClient:
    """The teacher's client behind distill's response cache: the same request is answered from the cache."""

    def __init__(self, client, cache: ResponseCache, where: str, stop: threading.Event):
        self.client, self.cache, self.where, self.stop = client, cache, where, stop
        self.fresh = 0

    def complete(self, request: Request) -> Completion:
        params = {"max_tokens": request.max_tokens, "temperature": request.temperature, "seed": request.seed,
                  "stop": request.stop, "json_schema": request.json_schema}
        if request.frequency_penalty:  # absent when off, so answers cached before the setting existed still match
            params["frequency_penalty"] = request.frequency_penalty
        key = cache_key("agent", self.where, params, request.messages)
        hit = self.cache.get(key)
        if hit is not None:
            return Completion(hit["text"], hit["prompt_tokens"], hit["completion_tokens"])
        if self.stop.is_set():  # raised through the runner (it is no RequestError): the stage stops here
            raise Interrupted("distill is stopping")
        c = self.client.complete(request)
        self.cache.put(key, {"text": c.text, "prompt_tokens": c.prompt_tokens,
                             "completion_tokens": c.completion_tokens})
        self.fresh += 1
        return c

    def close(self) -> None:
        self.client.close()


def records_of(mode: str, trace) -> list[dict]:
    """Training conversations from one kept run (see the module's docstring)."""
    if mode == "lm":
        return [{"messages": [{"role": m["role"], "content": m["content"]} for m in trace.transcript]}]
    out = []
    for t in trace.transcript:
        if t.get("step") == "model":
            system = [{"role": "system", "content": t["system"]}] if t.get("system") else []
            out.append({"messages": [*system, {"role": "user", "content": t["prompt"]},
                                     {"role": "assistant", "content": t["answer"]}]})
    return out


def record_traces(cfg: AgentTraceConfig, client, seed: int, log) -> tuple[list[dict], dict]:
    """Run the workflow's tasks with the teacher; (training records, report)."""
    from slmkit.pipelines.agent import scoring
    from slmkit.pipelines.agent.code_runner import run_code
    from slmkit.pipelines.agent.lm_runner import run_lm
    from slmkit.pipelines.agent.workflow import load_workflow

    wf = load_workflow(cfg.workflow)
    if "code" in cfg.modes and wf.controller is None:
        raise SlmkitError(f"distill.agent.modes: code mode needs a `controller` section in {cfg.workflow}")
    tasks = wf.tasks[cfg.offset:][:cfg.limit]
    if not tasks:
        raise SlmkitError(f"distill.agent: no tasks left in {cfg.workflow} after offset {cfg.offset}")
    runners = {"lm": run_lm, "code": run_code}
    records: list[dict] = []
    runs: list[dict] = []
    for mode in cfg.modes:
        kept = 0
        for i, task in enumerate(tasks):
            for r in range(cfg.k):
                sampled = cfg.k > 1
                opts = RunOptions(cfg.max_steps, cfg.max_tokens, cfg.temperature if sampled else 0.0,
                                  seed + r if sampled else None, cfg.frequency_penalty)
                trace = runners[mode](wf, task, client, opts)
                diff = scoring.state_diff(task.expected_state, trace.final_state)
                ok = not diff and trace.status == "answered"
                got = records_of(mode, trace) if ok else []
                for rec in got:
                    rec.update({"task": task.id, "mode": mode, "run": r})
                records += got
                kept += ok
                runs.append({"task": task.id, "mode": mode, "run": r, "kept": ok, "status": trace.status,
                             "records": len(got), "state_diff": diff, "error": trace.error})
            log(f"distill agent traces · {mode}: {i + 1}/{len(tasks)} tasks, {kept} runs kept")
    report = {"workflow": str(cfg.workflow), "tasks": [t.id for t in tasks], "modes": cfg.modes, "k": cfg.k,
              "runs": len(runs), "kept": sum(x["kept"] for x in runs), "records": len(records),
              "kept_by_mode": {m: sum(x["kept"] for x in runs if x["mode"] == m) for m in cfg.modes},
              "failed_runs": [x for x in runs if not x["kept"]][:50]}
    return records, report


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


__all__ = ["AgentTraceConfig", "CachingClient", "record_traces", "records_of"]
