"""BFCL's multi-turn base set: the items load with their APIs and ground truth, the environment is deterministic,
and the per-turn state and response checks pass a model that does what the ground truth does and fail one that
does nothing, or the wrong thing, naming what differs."""

from __future__ import annotations

import json

import pytest
from helpers import ScriptEndpoint
from test_agent import client, reply

from slmkit.pipelines.agent import bfcl_multi
from slmkit.pipelines.agent.trace import RunOptions
from slmkit.pipelines.core.errors import SlmkitError

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by make setup (pip install --no-deps)")
OPTS = RunOptions(max_steps=6, max_tokens=128, temperature=0.0, seed=None)


@pytest.fixture(scope="module")
def items() -> list[bfcl_multi.MultiItem]:
    return bfcl_multi.load_items()


def test_every_item_loads_and_its_ground_truth_replays_the_same_twice(items):
    assert len(items) == 200 and all(i.turns and len(i.turns) == len(i.ground_truth) for i in items)
    changed = 0
    for it in items:
        a, b = bfcl_multi.environment(it), bfcl_multi.environment(it)
        start = bfcl_multi.state(bfcl_multi.environment(it))
        for turn in it.ground_truth:
            for call in turn:
                ra = bfcl_multi.execute(a, *bfcl_multi.parse_call(call, a))
                rb = bfcl_multi.execute(b, *bfcl_multi.parse_call(call, b))
                assert ra == rb, (it.id, call)
        assert bfcl_multi.state_diff(a, b) == [], it.id  # no clock or random number moves the state
        changed += bfcl_multi.state(a) != start
    assert changed > 150  # most items change some API's state: the state check has something to see


def test_calls_parse_as_literals_with_positional_names(items):
    it = next(i for i in items if i.id == "multi_turn_base_0")
    env = bfcl_multi.environment(it)
    assert bfcl_multi.parse_call("sort('final_report.pdf')", env) == ("sort", {"file_name": "final_report.pdf"})
    assert bfcl_multi.parse_call("mv(source='a', destination='b')", env) == ("mv", {"source": "a",
                                                                                     "destination": "b"})
    with pytest.raises(ValueError):
        bfcl_multi.parse_call("__import__('os').system('true')", env)  # not a plain call of a name


def _ground_truth_script(it: bfcl_multi.MultiItem) -> list[tuple]:
    env = bfcl_multi.environment(it)
    script = []
    for turn in it.ground_truth:
        for call in turn:
            name, args = bfcl_multi.parse_call(call, env)
            script.append(reply(json.dumps({"tool": name, "arguments": args})))
        script.append(reply(json.dumps({"answer": "done"})))
    return script


def test_a_model_that_does_what_the_ground_truth_does_passes_every_turn(items):
    it = next(i for i in items if i.id == "multi_turn_base_0")
    with ScriptEndpoint(_ground_truth_script(it)) as ep:
        trace, turns = bfcl_multi.run_item(it, "lm", client(ep.url), OPTS)
    got = bfcl_multi.score(it, trace, turns)
    assert got["success"] and got["turns_passed"] == got["turns"] == 4, turns
    assert all(c.valid and c.error is None for c in trace.calls) and len(trace.calls) == 10
    # the model sees the item's functions less the excluded ones, each held to its own argument schema
    names = {b["properties"]["tool"]["const"] for b in ep.seen[0]["body"]["response_format"]["json_schema"]
             ["schema"]["anyOf"] if "tool" in b["properties"]}
    assert "mv" in names and "post_tweet" in names and "cp" not in names  # the item excludes cp


def test_doing_nothing_or_the_wrong_thing_fails_the_turn_and_says_what_differs(items):
    it = next(i for i in items if i.id == "multi_turn_base_1")  # turn 0 only reads: ls(a=True)
    with ScriptEndpoint([reply('{"answer": "ok"}')] * len(it.turns)) as ep:
        trace, turns = bfcl_multi.run_item(it, "lm", client(ep.url), OPTS)
    assert turns[0] == {"turn": 0, "passed": False, "differs": ["result of ls(a=True)"]}  # the response check
    assert not bfcl_multi.score(it, trace, turns)["success"]

    it = next(i for i in items if i.id == "multi_turn_base_0")
    wrong = [reply(json.dumps({"tool": "mkdir", "arguments": {"dir_name": "tmp"}})), reply('{"answer": "ok"}')]
    with ScriptEndpoint(wrong + [reply('{"answer": "ok"}')] * 3) as ep:
        trace, turns = bfcl_multi.run_item(it, "lm", client(ep.url), OPTS)
    assert not turns[0]["passed"] and "GorillaFileSystem.root" in turns[0]["differs"]


def test_a_malformed_call_is_invalid_and_the_turn_goes_on(items):
    it = next(i for i in items if i.id == "multi_turn_base_1")
    script = [reply('{"tool": "ls", "arguments": {"a": "yes"}}'), *_ground_truth_script(it)]
    with ScriptEndpoint(script) as ep:
        trace, turns = bfcl_multi.run_item(it, "lm", client(ep.url), OPTS)
    assert trace.invalid_outputs == 1 and trace.calls[0].valid is False
    assert all(t["passed"] for t in turns)  # told why, it went on and did the turn right
    assert "That was not a valid answer" in ep.seen[1]["body"]["messages"][-1]["content"]


def test_code_mode_is_refused_for_multi_turn(items):
    with pytest.raises(SlmkitError, match="lm mode only"):
        bfcl_multi.run_item(items[0], "code", None, OPTS)
