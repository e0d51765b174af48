"""agent: the two runners' loops, the final-state and call scoring, the stage and its bad input, on scripted
endpoints (a real loopback HTTP server answering from a script) and the demo workflow's real tools."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ScriptEndpoint
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.pipelines.agent import scoring
from slmkit.pipelines.agent.code_runner import run_code
from slmkit.pipelines.agent.lm_runner import run_lm
from slmkit.pipelines.agent.trace import RunOptions
from slmkit.pipelines.agent.workflow import load_workflow
from slmkit.pipelines.backends import ClientSpec, make_client
from slmkit.pipelines.core.errors import SlmkitError

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "recipes" / "data" / "agent_support.yaml"
OPTS = RunOptions(max_steps=6, max_tokens=128, temperature=0.0, seed=None)
FLAKY_CALLS: list[str] = []


def flaky_lookup(state: dict, order_id: str) -> dict:
    """A lookup that fails the first time it is asked (a timeout in a real back office), then answers.

    Args:
        order_id: the order's id
    """
    FLAKY_CALLS.append(order_id)
    if len(FLAKY_CALLS) == 1:
        raise TimeoutError("the order service did not answer")
    return {"order_id": order_id, **state["orders"][order_id]}


def reply(text: str) -> tuple:
    return (200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})


def call(tool: str, **arguments) -> tuple:
    return reply(json.dumps({"tool": tool, "arguments": arguments}))


def client(url: str):
    return make_client(ClientSpec(kind="openai", location=url, model="m", where="test endpoint", timeout=10))


def task_of(kind: str, workflow=None):
    wf = workflow or load_workflow(SUPPORT)
    return wf, next(t for t in wf.tasks if t.kind == kind)


def perfect_agent(body: dict) -> tuple:
    """A scripted model that does each workflow step right: lm mode from the conversation so far, code mode's
    model steps from their prompts (told apart by the schema they are held to)."""
    schema = body["response_format"]["json_schema"]["schema"]
    msgs = body["messages"]
    if "order_id" in schema.get("properties", {}):  # code: read_ticket
        return reply(json.dumps({"order_id": re.search(r"ORD-\d{5}", msgs[-1]["content"]).group(0)}))
    if "message" in schema.get("properties", {}):  # code: write_reply
        return reply(json.dumps({"message": "We have handled your request, thank you."}))
    order = re.search(r"ORD-\d{5}", msgs[1]["content"]).group(0)
    done = [m["content"] for m in msgs if m["role"] == "assistant"]
    results = [m["content"] for m in msgs[2:] if m["role"] == "user"]
    if not done:
        return call("lookup_order", order_id=order)
    if len(done) == 1:
        if "failed" in results[-1]:
            return call("escalate", order_id=order, reason="no such order")
        return call("check_refund_policy", order_id=order)
    if len(done) == 2 and "check_refund_policy" in done[-1]:
        policy = json.loads(results[-1].split(": ", 1)[1])
        if policy["eligible"]:
            return call("issue_refund", order_id=order, amount=policy["max_refund"])
        return call("escalate", order_id=order, reason=policy["reason"])
    if "send_reply" not in done[-1]:
        return call("send_reply", message="Done, thank you.")
    return reply(json.dumps({"answer": "resolved"}))


# ---------------------------------------------------------------- the lm runner's loop

def test_the_step_limit_is_honoured():
    wf, task = task_of("full_refund")
    order = task.expected_calls[0]["arguments"]["order_id"]
    with ScriptEndpoint(lambda body: call("lookup_order", order_id=order)) as ep:
        trace = run_lm(wf, task, client(ep.url), OPTS)
    assert trace.status == "step_limit" and trace.steps == trace.model_calls == OPTS.max_steps
    assert len(ep.seen) == OPTS.max_steps and len(trace.calls) == OPTS.max_steps


def test_a_tool_that_raises_is_reported_to_the_model():
    wf, task = task_of("unknown_order")
    order = task.expected_calls[0]["arguments"]["order_id"]
    with ScriptEndpoint([call("lookup_order", order_id=order), reply('{"answer": "escalating"}')]) as ep:
        trace = run_lm(wf, task, client(ep.url), OPTS)
    assert trace.calls[0].valid and trace.calls[0].error.startswith("KeyError")
    told = ep.seen[1]["body"]["messages"][-1]["content"]
    assert told.startswith("lookup_order failed: KeyError") and order in told
    assert trace.status == "answered" and trace.answer == "escalating"


def test_a_malformed_call_is_counted_invalid_and_the_run_goes_on():
    wf, task = task_of("full_refund")
    script = [reply("{not json"), call("lookup_order", order_id=7), call("no_such_tool", x=1),
              reply('{"answer": "giving up"}')]
    with ScriptEndpoint(script) as ep:
        trace = run_lm(wf, task, client(ep.url), OPTS)
    assert trace.status == "answered" and trace.invalid_outputs == 3
    assert [c.valid for c in trace.calls] == [False, False, False]
    assert trace.calls[1].name == "lookup_order"  # the tool it meant, for wrong-function accounting
    assert "not a valid answer" in ep.seen[1]["body"]["messages"][-1]["content"]
    assert trace.final_state["refunds"] == []  # nothing ran


def test_the_request_carries_the_action_schema():
    wf, task = task_of("full_refund")
    with ScriptEndpoint([reply('{"answer": "x"}')]) as ep:
        run_lm(wf, task, client(ep.url), OPTS)
    fmt = ep.seen[0]["body"]["response_format"]
    branches = fmt["json_schema"]["schema"]["anyOf"]
    assert fmt["type"] == "json_schema" and len(branches) == len(wf.tools) + 1
    assert {b["properties"]["tool"]["const"] for b in branches if "tool" in b["properties"]} == set(wf.tools)


# ---------------------------------------------------------------- the code runner

def test_the_controller_retries_a_failing_tool(tmp_path):
    spec = yaml.safe_load(SUPPORT.read_text())
    spec["tools"]["lookup_order"] = "test_agent:flaky_lookup"
    spec["controller"]["steps"]["lookup"]["retries"] = 1
    spec["tasks"] = str(ROOT / "recipes" / "data" / "agent_tasks.jsonl")
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(spec))
    wf, task = task_of("full_refund", load_workflow(tmp_path / "wf.yaml"))
    FLAKY_CALLS.clear()
    with ScriptEndpoint(perfect_agent) as ep:
        trace = run_code(wf, task, client(ep.url), OPTS)
    assert len(FLAKY_CALLS) == 2 and trace.calls[0].error.startswith("TimeoutError") and trace.calls[1].error is None
    assert scoring.state_diff(task.expected_state, trace.final_state) == {}


def test_the_controller_branches_to_on_error_when_a_tool_raises():
    wf, task = task_of("unknown_order")
    with ScriptEndpoint(perfect_agent) as ep:
        trace = run_code(wf, task, client(ep.url), OPTS)
    names = [c.name for c in trace.calls]
    assert names == ["lookup_order", "escalate", "send_reply"] and "KeyError" in trace.calls[1].arguments["reason"]
    assert scoring.state_diff(task.expected_state, trace.final_state) == {}
    assert trace.model_calls == 2  # the model read the id and wrote the reply; the controller did the rest


def test_a_model_step_that_does_not_fit_is_retried_then_stops_the_run():
    wf, task = task_of("full_refund")
    with ScriptEndpoint([reply('{"order_id": "42"}'), reply("not json")]) as ep:
        trace = run_code(wf, task, client(ep.url), OPTS)
    assert trace.status == "stopped" and trace.invalid_outputs == 2 and len(ep.seen) == 2  # retries: 1
    assert "read_ticket" in trace.error and not trace.calls


@pytest.mark.parametrize("runner", [run_code, run_lm])
def test_every_model_call_of_a_run_carries_its_sampling_settings(runner):
    wf, task = task_of("full_refund")
    opts = RunOptions(max_steps=6, max_tokens=128, temperature=0.7, seed=3, frequency_penalty=0.5)
    with ScriptEndpoint(perfect_agent) as ep:
        runner(wf, task, client(ep.url), opts)
    assert len(ep.seen) >= 2
    assert all((s["body"]["temperature"], s["body"]["seed"], s["body"]["frequency_penalty"]) == (0.7, 3, 0.5)
               for s in ep.seen)


# ---------------------------------------------------------------- scoring

def test_the_final_state_checker_catches_a_wrong_refund_amount():
    wf, task = task_of("half_refund")
    order = task.expected_calls[0]["arguments"]["order_id"]
    full_price = task.initial_state["orders"][order]["price"]
    script = [call("lookup_order", order_id=order), call("issue_refund", order_id=order, amount=full_price),
              call("send_reply", message="Refunded."), reply('{"answer": "done"}')]
    with ScriptEndpoint(script) as ep:
        trace = run_lm(wf, task, client(ep.url), OPTS)
    diff = scoring.state_diff(task.expected_state, trace.final_state)
    assert set(diff) == {"refunds"} and diff["refunds"]["got"][0]["amount"] == full_price
    errors = scoring.call_errors(task.expected_calls, [c for c in trace.calls if c.valid], wf.tools)
    assert errors == [None, "wrong_function", "wrong_function", "missing_call"]
    right = [{"order_id": order, "amount": round(full_price / 2, 2) + 0.001}]  # to the cent
    assert scoring.state_diff(task.expected_state, {**trace.final_state, "refunds": right}) == {}


def test_call_errors_are_bfcls_categories():
    from slmkit.pipelines.agent.trace import Call

    wf = load_workflow(SUPPORT)
    want = {"name": "issue_refund", "arguments": {"order_id": "ORD-10000", "amount": 20.0}}
    cases = {
        None: Call("issue_refund", {"order_id": "ORD-10000", "amount": 20}, True),  # an int for a number: fine
        "wrong_function": Call("escalate", {"order_id": "ORD-10000", "reason": "x"}, True),
        "missing_argument": Call("issue_refund", {"order_id": "ORD-10000"}, True),
        "unexpected_argument": Call("issue_refund", {"order_id": "ORD-10000", "amount": 20.0, "note": 1}, True),
        "wrong_type": Call("issue_refund", {"order_id": "ORD-10000", "amount": "20"}, True),
        "wrong_value": Call("issue_refund", {"order_id": "ORD-10000", "amount": 25.0}, True),
    }
    for expected, got in cases.items():
        assert scoring.call_error(want, got, wf.tools["issue_refund"].parameters) == expected, expected


def test_pass_hat_k_falls_as_runs_disagree():
    assert scoring.pass_hat_k([[True, True], [True, False]], 1) == 0.75
    assert scoring.pass_hat_k([[True, True], [True, False]], 2) == 0.5
    assert scoring.pass_hat_k([[True, True, False]], 2) == pytest.approx(1 / 3)
    assert scoring.percentile([1, 2, 3, 4], 50) == 2.5 and scoring.percentile([], 50) is None


# ---------------------------------------------------------------- the stage, end to end

def test_slmkit_agent_writes_the_table_for_both_modes(tmp_path):
    with ScriptEndpoint(perfect_agent) as ep:
        target = f"{{kind: openai, model: m, base_url: '{ep.url}', label: scripted, price_input_per_1m: 1.0}}"
        res = CliRunner().invoke(app, ["agent", str(SUPPORT), "-t", target, "--limit", "6", "--k", "2",
                                       "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    result = json.loads((out / "agent.json").read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"lm", "code"} and result["suites"][0]["items"] == 6
    for row in rows.values():
        assert row["success"] == 1.0 and row["pass_hat_k"] == {"1": 1.0, "2": 1.0} and row["runs"] == 12
        assert row["valid_calls"] == 1.0 and row["call_accuracy"] == 1.0 and row["usd_per_success"] > 0
    assert rows["code"]["model_calls_per_task"] == 2 < rows["lm"]["model_calls_per_task"]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 24 and all(r["state_diff"] == {} for r in runs)
    assert (out / "agent.png").stat().st_size > 0 and "| suite |" in (out / "agent.md").read_text()
    assert "code: 12/12 succeeded" in res.output


def test_an_agent_section_runs_as_a_recipe_stage(tmp_path):
    from slmkit.pipelines.core.stages import ORDER, STAGES

    assert ORDER.index("agent") > ORDER.index("bench") and STAGES["agent"].config.__name__ == "AgentConfig"
    with ScriptEndpoint(perfect_agent) as ep:
        recipe = {"name": "agentonly", "model": "smollm2-135m-instruct",
                  "agent": {"workflow": str(SUPPORT), "limit": 2, "modes": ["code"],
                            "targets": [{"kind": "openai", "model": "m", "base_url": ep.url}]}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        res = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    (done,) = (tmp_path / "runs").glob("agentonly*/*_agent/agent.json")
    assert json.loads(done.read_text())["rows"][0]["success"] == 1.0


# ---------------------------------------------------------------- bad input names the file and the key

def _workflow(tmp_path, **changes) -> Path:
    spec = yaml.safe_load(SUPPORT.read_text())
    spec["tasks"] = str(ROOT / "recipes" / "data" / "agent_tasks.jsonl")
    for key, value in changes.items():
        node = spec
        *heads, last = key.split(".")
        for h in heads:
            node = node[h]
        node[last] = value
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("changes,says", [
    ({"tools.lookup_order": "no_such_module_x:lookup"}, r"wf.yaml: tools.lookup_order: cannot import module "
                                                        r"'no_such_module_x'"),
    ({"tools.lookup_order": "slmkit.recipes.support_tools:nope"}, r"tools.lookup_order: module .* has no "
                                                                  r"function 'nope'"),
    ({"tools.escalate": {"ref": "slmkit.recipes.support_tools:escalate",
                         "parameters": {"type": "object", "properties": {"order_id": {"type": "text"}}}}},
     r"wf.yaml: tools.escalate.parameters: not a valid JSON Schema \(at properties.order_id.type\)"),
    ({"controller.steps.read_ticket.model.schema": {"type": 5}}, r"controller.steps.read_ticket.model.schema: "
                                                                 r"not a valid JSON Schema"),
    ({"controller.steps.lookup.tool": "find_order"}, r"controller.steps.lookup.tool: no tool 'find_order'"),
    ({"controller.steps.lookup.next": "nowhere"}, r"controller.steps.lookup: goes to 'nowhere'"),
])
def test_a_bad_workflow_names_the_file_and_the_key(tmp_path, changes, says):
    with pytest.raises(SlmkitError, match=says):
        load_workflow(_workflow(tmp_path, **changes))


def test_an_expected_state_naming_an_unknown_field_names_the_file_and_the_task(tmp_path):
    task = json.loads((ROOT / "recipes/data/agent_tasks.jsonl").read_text().splitlines()[0])
    task["expected_state"]["refund_total"] = 10
    (tmp_path / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    path = _workflow(tmp_path, tasks=str(tmp_path / "tasks.jsonl"))
    with pytest.raises(SlmkitError, match=r"tasks.jsonl: task 'support-000': expected_state.refund_total is not a "
                                          r"field of the state"):
        load_workflow(path)


def test_a_task_line_that_is_not_a_task_names_its_line(tmp_path):
    (tmp_path / "tasks.jsonl").write_text('{"id": "a", "request": "x", "expected_state": {}}\n{"id": "b"}\n')
    with pytest.raises(SlmkitError, match=r"tasks.jsonl:2: request: Field required"):
        load_workflow(_workflow(tmp_path, tasks=str(tmp_path / "tasks.jsonl")))


def test_code_mode_without_a_controller_is_refused(tmp_path):
    spec = yaml.safe_load(_workflow(tmp_path).read_text())
    del spec["controller"]
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(app, ["agent", str(tmp_path / "wf.yaml"), "-t", "openai:m@http://127.0.0.1:9/v1",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "code mode needs a `controller`" in str(res.exception or res.output)


# ---------------------------------------------------------------- the demo data

def test_the_committed_tasks_are_what_the_seeded_script_writes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_agent_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    assert (tmp_path / "agent_tasks.jsonl").read_bytes() == (ROOT / "recipes/data/agent_tasks.jsonl").read_bytes()


def test_the_ground_truth_follows_the_tools_when_done_right():
    """Every task's expected state is what the right calls, made with the real tools, leave behind."""
    wf = load_workflow(SUPPORT)
    kinds = {t.kind for t in wf.tasks}
    assert kinds == {"full_refund", "half_refund", "too_late", "final_sale", "already_refunded", "unknown_order"}
    for task in wf.tasks:
        state = wf.initial_state(task)
        for c in task.expected_calls:
            args = {"reason": "r", "message": "m"} | c["arguments"]
            args = {k: v for k, v in args.items() if k in wf.tools[c["name"]].parameters["properties"]}
            try:
                wf.tools[c["name"]](state, args)
            except KeyError:
                assert task.kind == "unknown_order"
        assert scoring.state_diff(task.expected_state, state) == {}, task.id


def test_editing_a_workflows_tasks_or_tools_makes_the_agent_stage_stale(tmp_path):
    """The fingerprint covers what the workflow file names: its tasks file and its tools' modules."""
    import shutil

    from slmkit.pipelines.agent import AgentConfig
    from slmkit.pipelines.core.runner import input_digests

    data = Path(__file__).parent.parent / "recipes" / "data"
    for name in ("agent_support.yaml", "agent_tasks.jsonl"):
        shutil.copyfile(data / name, tmp_path / name)
    (tmp_path / "x.gguf").write_bytes(b"")  # a target is checked to exist; nothing here loads it
    cfg = AgentConfig.model_validate({"workflow": str(tmp_path / "agent_support.yaml"),
                                      "targets": ["gguf:x.gguf"]}, context={"base_dir": tmp_path})
    before = input_digests(cfg, None)
    assert str((tmp_path / "agent_tasks.jsonl").resolve()) in before
    assert any(k.endswith("support_tools.py") for k in before)
    with (tmp_path / "agent_tasks.jsonl").open("a") as f:
        f.write("\n")
    assert input_digests(cfg, None) != before
