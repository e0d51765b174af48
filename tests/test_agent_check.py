"""`slmkit agent --write-reported / --check`: the rows' rates are written and held within their margin; a row
that moved past it, a missing row, a k that differs and a figure agent does not check are each caught."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.pipelines.agent import check as agent_check
from slmkit.pipelines.core.errors import SlmkitError, StageFailed


def _run(success_code: float = 0.75, k: int = 2) -> dict:
    def row(target, mode, success, pass_k, valid, acc):
        return {"suite": "workflow:support-refunds", "target": target, "mode": mode, "success": success,
                "pass_hat_k": {"1": success, str(k): pass_k} if k > 1 else {"1": success},
                "valid_calls": valid, "call_accuracy": acc, "latency_p50_s": 3.2}

    return {"date": "2026-12-02T00:00:00", "machine": {"cpus": 2}, "k": k, "temperature": 0.7,
            "rows": [row("fine-tuned Q4_K_M", "code", success_code, 0.5, 1.0, 0.9),
                     row("fine-tuned Q4_K_M", "lm", 0.0, 0.0, 0.25, None)]}


def test_reported_rows_reproduce_and_a_moved_row_is_caught(tmp_path):
    results = tmp_path / "agent.json"
    results.write_text(json.dumps(_run()))
    reported = agent_check.write_reported(results, tmp_path / "rep.json", console=_Quiet())
    key = "workflow:support-refunds|fine-tuned Q4_K_M|code"
    assert reported["rows"][key] == {"success": 0.75, "pass^2": 0.5, "valid_calls": 1.0, "call_accuracy": 0.9}
    checks = agent_check.check(_run(), reported)
    assert checks and all(c.ok for c in checks)
    # call_accuracy None in both (lm mode here matched nothing to expect): not held, not failed
    assert not any(c.target.endswith("|lm") and c.figure == "call_accuracy" for c in checks)

    near = agent_check.check(_run(success_code=0.5), reported)  # within 0.25: a sampled run or two moved
    assert all(c.ok for c in near)
    far = agent_check.check(_run(success_code=0.25), reported)
    assert [(c.target, c.figure) for c in far if not c.ok] == [(key, "success")]


def test_missing_row_k_mismatch_and_unknown_figure(tmp_path):
    reported = {"k": 2, "rows": {"workflow:support-refunds|base F16|code": {"success": 0.5}}}
    missing = agent_check.check(_run(), reported)
    assert len(missing) == 1 and not missing[0].ok and missing[0].measured is None
    with pytest.raises(SlmkitError, match="k = 2, but the run used k = 1"):
        agent_check.check(_run(k=1), reported)
    bad = {"k": 2, "rows": {"workflow:support-refunds|fine-tuned Q4_K_M|code": {"latency_p50_s": 3.0}}}
    with pytest.raises(SlmkitError, match="latency_p50_s: not a figure agent checks"):
        agent_check.check(_run(), bad)


def test_cli_check_exits_1_on_a_miss_and_needs_results(tmp_path):
    results, rep = tmp_path / "agent.json", tmp_path / "rep.json"
    results.write_text(json.dumps(_run()))
    runner = CliRunner()
    assert runner.invoke(app, ["agent", "--write-reported", str(rep), "--results", str(results)]).exit_code == 0
    assert runner.invoke(app, ["agent", "--check", str(rep), "--results", str(results)]).exit_code == 0
    results.write_text(json.dumps(_run(success_code=0.0)))
    miss = runner.invoke(app, ["agent", "--check", str(rep), "--results", str(results)])
    # the app's entry point turns these errors into a message and an exit code; CliRunner hands them over as raised
    assert isinstance(miss.exception, StageFailed) and "1 of 7 figures outside tolerance" in str(miss.exception)
    alone = runner.invoke(app, ["agent", "--check", str(rep)])
    assert isinstance(alone.exception, SlmkitError) and "need --results" in str(alone.exception)
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  nope")
    bad = runner.invoke(app, ["agent", "--check", str(rep), "--results", str(broken)])
    assert isinstance(bad.exception, SlmkitError) and f"{broken}:2: not valid JSON" in str(bad.exception)


@pytest.mark.parametrize("verb", ["agent", "route"])
def test_check_verbs_refuse_half_given_options(tmp_path, verb):
    """agent and route share the --check/--write-reported dispatch: each half-given form gets its own error."""
    runner = CliRunner()
    alone = runner.invoke(app, [verb, "--write-reported", str(tmp_path / "rep.json")])
    assert isinstance(alone.exception, SlmkitError)
    assert f"slmkit {verb}: --check and --write-reported need --results {verb.upper()}_JSON" in str(alone.exception)
    stray = runner.invoke(app, [verb, "--results", str(tmp_path / "x.json")])
    assert isinstance(stray.exception, SlmkitError) and "--results goes with --check" in str(stray.exception)
    assert not (tmp_path / "rep.json").exists()


class _Quiet:
    def print(self, *a, **k):
        pass
