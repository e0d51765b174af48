"""Reported figures per machine kind (core/reported.py): a run is held to its own kind's set, a kind nobody
reported to the set it comes closest to, a file without `machines` to its one set; --write-reported adds or
replaces its own kind's set and keeps the others; and the machine block names a kind."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from slmkit.pipelines.bench import check as bench_check
from slmkit.pipelines.core import machine, reported
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.route import check as route_check

# Two kinds' demo figures for one target: the urgency accuracy that moved 8 of 40 items between them.
AVX2 = {"about": "AMD", "targets": {"q4": {"quality": 0.775, "lm_eval:urgency:acc": 0.575}}}
AVX512 = {"about": "Intel", "targets": {"q4": {"quality": 0.75, "lm_eval:urgency:acc": 0.375}}}
FILE = {"metric": "json_fields", "tolerances": {"quality_abs": 0.05, "lm_eval_stderr": 2.0},
        "machines": {"avx2": AVX2, "avx512": AVX512}}


def _bench(isa: str | None, urgency: float) -> dict:
    lm_eval = {"urgency": {"acc": urgency, "acc_stderr": 0.077}}
    return {"baseline": "q4", "machine": {"cpus": 2, **({"isa": isa} if isa else {})},
            "targets": [{"label": "q4", "quality": 0.76, "lm_eval": lm_eval}]}


def _check(tmp_path, bench: dict, figures: dict = FILE) -> str:
    (tmp_path / "rep.json").write_text(json.dumps(figures))
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = io.StringIO()
    bench_check.run_check(tmp_path / "rep.json", tmp_path / "bench.json", Console(file=out, width=200))
    return out.getvalue()


def test_a_run_is_held_to_its_own_kinds_figures_first(tmp_path):
    assert "of this run's kind (avx512)" in _check(tmp_path, _bench("avx512", 0.375))
    assert "of this run's kind (avx2)" in _check(tmp_path, _bench("avx2", 0.575))
    # within both sets' margins (2 s.e., 0.154): its own kind's is the one shown
    assert "of this run's kind (avx2)" in _check(tmp_path, _bench("avx2", 0.45))
    # an AVX2 machine that repeats the AVX-512 run: reproduced, and the table says which run it repeats
    assert "this run (avx2) repeats the avx512 machine's figures" in _check(tmp_path, _bench("avx2", 0.375))
    # outside every set: the miss is its own kind's
    with pytest.raises(StageFailed, match=r"q4 lm_eval:urgency:acc \(reported 0.575, measured 0.95"):
        _check(tmp_path, _bench("avx2", 0.95))


def test_a_kind_nobody_reported_is_held_to_the_closest_set(tmp_path):
    printed = _check(tmp_path, _bench("arm64", 0.55))
    assert "no figures reported for this run's kind (arm64)" in printed and "is avx2's" in printed
    with pytest.raises(StageFailed):  # above both
        _check(tmp_path, _bench("arm64", 0.95))


def test_a_file_without_machines_is_one_set_for_every_kind(tmp_path):
    flat = {k: v for k, v in FILE.items() if k != "machines"} | {"targets": AVX512["targets"]}
    assert "for every machine kind" in _check(tmp_path, _bench("avx2", 0.4), flat)
    assert "for every machine kind" in _check(tmp_path, _bench(None, 0.4), flat)  # results without a kind


def test_a_set_without_targets_or_a_bad_machines_block_is_named(tmp_path):
    with pytest.raises(SlmkitError, match="expected 'targets'"):
        _check(tmp_path, _bench("avx2", 0.5), {"machines": {"avx2": {"about": "x"}}})
    with pytest.raises(SlmkitError, match="'machines' must map a machine kind"):
        _check(tmp_path, _bench("avx2", 0.5), {"machines": {"avx2": [1]}})


def test_write_set_replaces_its_kind_and_keeps_the_others(tmp_path):
    path = tmp_path / "route.reported.json"
    path.write_text(json.dumps({"tolerances": {"quality_abs": 0.1}, "machines": {
        "avx2": {"about": "old", "router": "cascade", "figures": {"quality": 0.7}},
        "avx512": {"about": "older", "router": "cascade", "figures": {"quality": 0.6}}}}))
    doc = {"about": "new", "router": "classifier", "tolerances": {"quality_abs": 0.05},
           "figures": {"quality": 0.66}}
    out = reported.write_set(path, doc, "avx512", ("router", "figures"))
    assert out == json.loads(path.read_text())
    assert out["machines"]["avx2"]["about"] == "old"  # kept
    assert out["machines"]["avx512"] == {"about": "new", "router": "classifier", "figures": {"quality": 0.66}}
    assert out["tolerances"] == {"quality_abs": 0.1}  # margins set by hand outlive new figures
    # and route --check reads it back per kind
    results = {"machine": {"isa": "avx512"}, "chosen": "classifier",
               "routers": {"classifier": {"quality": 0.7, "requests": 64}}}
    checks = route_check.check(results, reported.figure_sets(out, "x")["avx512"])
    assert [(c.figure, c.ok) for c in checks] == [("quality", True)]


def test_write_set_refuses_to_overwrite_a_broken_file(tmp_path):
    path = tmp_path / "rep.json"
    path.write_text('{"machines": ')
    with pytest.raises(SlmkitError, match="rep.json:1: not valid JSON"):
        reported.write_set(path, {"targets": {}}, "avx2", ("targets",))
    assert path.read_text() == '{"machines": '


def test_the_machine_block_names_a_kind(monkeypatch):
    described = machine.describe()
    assert described["isa"] == machine.isa() and described["cpus"] >= 1
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("Xeon", {"sse2", "avx2", "avx512f"}))
    assert machine.isa() == "avx512"
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("EPYC", {"sse2", "avx2"}))
    assert machine.isa() == "avx2"
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    assert machine.isa() == "arm64"
