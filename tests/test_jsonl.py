"""The shared JSONL reader: errors name FILE:LINE, and few-shot files mean the same to distill and bench."""

from __future__ import annotations

import json

import pytest

from slmkit.evals.tasks import load_few_shot
from slmkit.pipelines import distill
from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError


def test_records_skip_blank_lines_and_name_bad_ones(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert [(r.lineno, r.value) for r in jsonl.records(p)] == [(1, {"a": 1}), (4, {"a": 2})]
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(SlmkitError, match=r"r.jsonl:2: expected a JSON object, got list"):
        list(jsonl.records(p))
    assert [r.value for r in jsonl.records(p, objects=False)] == [{"a": 1}, [1, 2]]
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(SlmkitError, match=r"r.jsonl:2: not valid JSON \(.* at column \d+\)"):
        list(jsonl.records(p))
    p.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(SlmkitError, match=r"r.jsonl:1:8: not UTF-8 text"):
        list(jsonl.records(p))
    with pytest.raises(SlmkitError, match=r"missing.jsonl: cannot read"):
        list(jsonl.records(tmp_path / "missing.jsonl"))


def test_few_shot_rules_are_shared_by_distill_and_bench(tmp_path):
    p = tmp_path / "shots.jsonl"
    lines = [{"prompt": "q1", "response": "a1"}, {"user": "q2", "assistant": {"k": [1, "é"]}}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    want = [("q1", "a1"), ("q2", '{"k": [1, "é"]}')]
    assert jsonl.few_shot_pairs(p) == want
    assert [(s.user, s.assistant) for s in distill.read_shots(p)] == want
    assert [t["content"] for t in load_few_shot(p)] == ["q1", "a1", "q2", '{"k": [1, "é"]}']
    for bad in ({"prompt": "q"}, {"prompt": 3, "response": "a"}, {"prompt": "q", "response": None}):
        p.write_text(json.dumps(lines[0]) + "\n" + json.dumps(bad) + "\n")
        for reader in (distill.read_shots, load_few_shot):
            with pytest.raises(SlmkitError, match=r"shots.jsonl:2: a few-shot line needs 'prompt' and 'response'"):
                reader(p)
    p.write_text("\n")
    with pytest.raises(SlmkitError, match="no few-shot pairs"):
        load_few_shot(p)


def test_write_jsonl_is_atomic_and_keeps_non_ascii(tmp_path):
    from slmkit.pipelines.core.jsonl import write_jsonl

    out = tmp_path / "train.jsonl"
    assert write_jsonl(out, ({"i": i, "name": "Zoë"} for i in range(3))) == 3
    assert out.read_text(encoding="utf-8").splitlines()[0] == '{"i": 0, "name": "Zoë"}'

    def broken():
        yield {"i": 0}
        raise RuntimeError("the producer died half-way")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "half.jsonl", broken())
    assert not (tmp_path / "half.jsonl").exists()  # never a short file under the final name ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]  # ... and no temporary left behind
    before = out.read_text(encoding="utf-8")
    with pytest.raises(RuntimeError):
        write_jsonl(out, broken())
    assert out.read_text(encoding="utf-8") == before  # an existing file stays whole
