"""slmkit's BFCL checker against hand-checked items of the bfcl-eval package's data, right and wrong, and both
modes' loops on a scripted endpoint."""

from __future__ import annotations

import json

import pytest
from helpers import ScriptEndpoint
from test_agent import client, reply

from slmkit.pipelines.agent import bfcl
from slmkit.pipelines.agent.trace import Call, RunOptions, Trace
from slmkit.pipelines.core.errors import SlmkitError

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed by make setup (pip install --no-deps)")
OPTS = RunOptions(max_steps=4, max_tokens=128, temperature=0.0, seed=None)


def item(subset: str, item_id: str) -> bfcl.Item:
    return next(i for i in bfcl.load_items(subset) if i.id == item_id)


CURVE = {"function": "x**2", "interval": [1.0, 3.0]}  # simple_python_13: area under y=x^2 from 1 to 3
# (subset, id, function, arguments, category BFCL's rules give; None: accepted). Checked by hand against the
# possible answers in bfcl-eval's data/possible_answer files.
CASES = [
    ("simple", "simple_python_13", "calculate_area_under_curve", CURVE, None),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "method": "trapezoidal"}, None),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "function": "X ** 2"}, None),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "function": "y=x**2"}, None),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "interval": [1.0, 4.0]}, "wrong_value"),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "interval": [1, 3]}, "wrong_type"),
    ("simple", "simple_python_13", "calculate_area_under_curve", {"function": "x**2"}, "missing_argument"),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "method": "simpson"}, "wrong_value"),
    ("simple", "simple_python_13", "calculate_area_under_curve", {**CURVE, "tol": 0.1}, "unexpected_argument"),
    ("simple", "simple_python_13", "calculate_integral", CURVE, "wrong_function"),
    ("simple", "simple_python_14", "calculate_derivative", {"function": "3x**2 + 2x - 1", "x_value": 0}, None),
    ("simple", "simple_python_14", "calculate_derivative", {"function": "3x**2 + 2x - 1", "x_value": 1.0},
     "wrong_value"),
    ("simple", "simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5}, None),
    ("simple", "simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"}, None),
    ("simple", "simple_python_0", "calculate_triangle_area", {"base": 10.0, "height": 5}, "wrong_type"),
    ("simple", "simple_python_0", "calculate_triangle_area", {"base": "10", "height": 5}, "wrong_type"),
    ("multiple", "multiple_2", "country_info.capital", {"country": "brazil"}, None),
    ("multiple", "multiple_2", "country_info.largest_city", {"country": "Brazil"}, "wrong_function"),
    ("multiple", "multiple_2", "country_info.capital", {"country": "Argentina"}, "wrong_value"),
]


@pytest.mark.parametrize("subset,item_id,name,arguments,category", CASES)
def test_the_checker_agrees_with_hand_checked_items(subset, item_id, name, arguments, category):
    assert bfcl.check_call(item(subset, item_id), name, arguments) == category


def test_the_subsets_are_read_with_their_answers():
    for subset, expected in (("simple", 400), ("multiple", 200), ("irrelevance", 240)):
        items = bfcl.load_items(subset)
        assert len(items) == expected and all(i.question and i.functions for i in items)
        assert all((i.ground_truth is None) == (subset == "irrelevance") for i in items)
    assert len(bfcl.load_items("simple", limit=5)) == 5


def test_bfcl_types_become_json_schema():
    schema = bfcl.tools_of(item("simple", "simple_python_13"))["calculate_area_under_curve"].parameters
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["interval"] == {"type": "array", "items": {"type": "number"},
                                                "description": schema["properties"]["interval"]["description"]}


def test_irrelevance_is_right_only_without_a_call():
    it = item("irrelevance", "irrelevance_0")
    answered = Trace(answer="no function fits")
    assert bfcl.score(it, answered)["success"] and bfcl.score(it, answered)["abstained"]
    called = Trace(calls=[Call("determine_body_mass_index", {"weight": 1.0, "height": 2.0}, True)])
    assert not bfcl.score(it, called)["success"]


@pytest.mark.parametrize("mode", ["lm", "code"])
def test_both_modes_call_and_are_scored(mode):
    it = item("multiple", "multiple_2")
    script = {"lm": [reply(json.dumps({"tool": "country_info.capital", "arguments": {"country": "Brazil"}}))],
              "code": [reply('{"function": "country_info.capital"}'), reply('{"country": "Brazil"}')]}[mode]
    with ScriptEndpoint(script) as ep:
        trace = bfcl.run_item(it, mode, client(ep.url), OPTS)
    assert bfcl.score(it, trace) == {"success": True, "should_abstain": False, "abstained": False,
                                     "call_errors": [None]}
    schemas = [s["body"]["response_format"]["json_schema"]["schema"] for s in ep.seen]
    if mode == "code":  # pick from the names (or none), then fill the picked function's own schema
        assert schemas[0]["properties"]["function"]["enum"][-1] == "none" and "country" in schemas[1]["properties"]
    else:
        assert len(schemas[0]["anyOf"]) == 4  # three functions and the answer


def test_a_malformed_answer_is_an_invalid_call_not_a_crash():
    it = item("simple", "simple_python_0")
    with ScriptEndpoint([reply('{"tool": "calculate_triangle_area", "arguments": {"base": "ten"}')]) as ep:
        trace = bfcl.run_item(it, "lm", client(ep.url), OPTS)
    assert trace.invalid_outputs == 1 and trace.calls[0].valid is False
    assert bfcl.score(it, trace)["success"] is False


def test_bfcl_eval_missing_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bfcl_eval" else real(name, *a))
    with pytest.raises(SlmkitError, match=r"agent.bfcl: the bfcl-eval package is not installed; .*--no-deps"):
        bfcl.load_items("simple")
    with pytest.raises(SlmkitError, match=r"agent.bfcl.subsets: no subset 'live'"):
        bfcl.load_items("live")
