"""distill mode agent: a teacher runs the workflow's tasks; its successful runs become chat SFT records (code:
one per model step, lm: the whole conversation), failed runs none; every request is cached, so a rerun asks
nothing; finetune reads the records."""

from __future__ import annotations

import json
import re

import pytest
from helpers import ScriptEndpoint, distill_ctx
from test_agent import SUPPORT, perfect_agent, reply

from slmkit.pipelines import distill
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.finetune import sft_data


def _config(url: str, **agent) -> distill.DistillConfig:
    return distill.DistillConfig.model_validate({
        "teacher": {"kind": "openai", "model": "m", "base_url": url, "timeout": 60, "retries": 0},
        "mode": "agent", "agent": {"workflow": str(SUPPORT), "offset": 6, "limit": 3, **agent}})


def _rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_kept_runs_become_records_and_a_rerun_asks_nothing(tmp_path):
    with ScriptEndpoint(perfect_agent) as ep:
        res = distill.run(_config(ep.url, modes=["code", "lm"]), distill_ctx(tmp_path))
        asked = len(ep.seen)
        again = distill.run(_config(ep.url, modes=["code", "lm"]), distill_ctx(tmp_path, "again"))
        assert len(ep.seen) == asked and again.metrics["requests_new"] == 0  # all from the cache
    rows = _rows(tmp_path / "out/train.jsonl")
    code = [r for r in rows if r["mode"] == "code"]
    lm = [r for r in rows if r["mode"] == "lm"]
    assert res.metrics == {"runs": 6, "kept": 6, "records": 9, "requests_new": asked}
    assert len(code) == 6 and len(lm) == 3  # two model steps per code run (order id, reply); one conversation per lm run
    first = code[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and "Copy the order id" in first[0]["content"]
    assert re.fullmatch(r'\{"order_id": "ORD-\d{5}"\}', first[1]["content"])
    conv = lm[0]["messages"]
    assert conv[0]["role"] == "system" and "lookup_order" in conv[0]["content"]
    calls = [json.loads(m["content"]) for m in conv if m["role"] == "assistant"]
    assert [c.get("tool") for c in calls] == ["lookup_order", "check_refund_policy", calls[2]["tool"],
                                              "send_reply", None] and calls[-1] == {"answer": "resolved"}
    assert {r["task"] for r in rows} == {r["task"] for r in lm}  # the three tasks after the first six
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["kept_by_mode"] == {"code": 3, "lm": 3} and report["failed_runs"] == []
    # finetune reads them as conversations, every assistant turn a target
    convs = sft_data.read_conversations(tmp_path / "out/train.jsonl")
    assert len(convs) == 9 and all(c[-1]["role"] == "assistant" for c in convs)


def test_a_run_that_ends_wrong_gives_no_record(tmp_path):
    def wrong_amount(body):  # code mode is right throughout; lm mode refunds one cent too much
        got = perfect_agent(body)
        text = got[2]["choices"][0]["message"]["content"]
        if '"issue_refund"' in text:
            action = json.loads(text)
            action["arguments"]["amount"] = round(action["arguments"]["amount"] + 0.01, 2)
            return reply(json.dumps(action))
        return got

    with ScriptEndpoint(wrong_amount) as ep:
        res = distill.run(_config(ep.url, modes=["lm"], offset=0, limit=3), distill_ctx(tmp_path))
    report = json.loads((tmp_path / "out/report.json").read_text())
    refunded = [r for r in report["failed_runs"] if "refunds" in r["state_diff"]]
    assert refunded and res.metrics["kept"] == report["runs"] - len(report["failed_runs"])
    assert all(r["task"] not in {f["task"] for f in refunded} for r in _rows(tmp_path / "out/train.jsonl"))


def test_no_run_kept_fails_the_stage_and_says_where(tmp_path):
    with ScriptEndpoint(lambda body: reply("not json")) as ep:
        with pytest.raises(StageFailed, match=r"completed none of the 3 runs .*report.json"):
            distill.run(_config(ep.url), distill_ctx(tmp_path))


def test_mode_agent_needs_its_section():
    with pytest.raises(SlmkitError, match="distill.agent: mode 'agent' needs an `agent` section"):
        distill.run(distill.DistillConfig.model_validate({"teacher": "openai:m@http://127.0.0.1:9/v1",
                                                          "mode": "agent"}), None)


def test_the_workflow_tasks_file_is_part_of_the_fingerprint(tmp_path):
    from slmkit.pipelines.core.types import input_values

    found = {str(v) for v in input_values(_config("http://127.0.0.1:9/v1"))}
    assert str(SUPPORT) in found and any(v.endswith("agent_tasks.jsonl") for v in found)
    assert any(v.endswith("support_tools.py") for v in found)


def test_a_frequency_penalty_reaches_the_teacher_and_is_asked_anew(tmp_path):
    """The penalty is sent with every teacher call, and a run with another penalty is not answered from the
    cache of a run without one (the answers differ); without it, the cache keys are those of before."""
    with ScriptEndpoint(perfect_agent) as ep:
        distill.run(_config(ep.url, limit=1), distill_ctx(tmp_path))
        plain = len(ep.seen)
        res = distill.run(_config(ep.url, limit=1, frequency_penalty=0.5), distill_ctx(tmp_path, "penalised"))
    assert "frequency_penalty" not in ep.seen[0]["body"]
    assert res.metrics["requests_new"] == plain == len(ep.seen) - plain
    assert all(s["body"]["frequency_penalty"] == 0.5 for s in ep.seen[plain:])
