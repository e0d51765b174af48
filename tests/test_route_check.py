"""route --check holds the reported router's figures: shares within binomial standard errors (a reproduction on
another CPU moves a cascade's threshold by a few requests), quality within its absolute margin, and a different
router chosen is a note, not a failure."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from slmkit.pipelines.core.errors import StageFailed
from slmkit.pipelines.route import check as route_check

REPORTED = {"router": "cascade", "figures": {"quality": 0.6875, "remote_share": 0.2969, "remote_spend_ratio": 0.2953}}


def _run(tmp_path, cascade: dict, chosen: str = "cascade") -> str:
    row = {"quality": 0.6875, "remote_share": 0.2969, "remote_spend_ratio": 0.2953, "requests": 64, **cascade}
    results = {"chosen": chosen, "routers": {"cascade": row, "classifier": {**row, "quality": 0.65}}}
    (tmp_path / "reported.json").write_text(json.dumps(REPORTED))
    (tmp_path / "route.json").write_text(json.dumps(results))
    out = io.StringIO()
    route_check.run_check(tmp_path / "reported.json", tmp_path / "route.json", Console(file=out, width=200))
    return out.getvalue()


def test_a_share_four_requests_off_on_another_cpu_reproduces_and_the_other_choice_is_a_note(tmp_path):
    # the AVX2 machine's demo run: the cascade sent 23 of 64 remote where 19 were reported; classifier chosen
    printed = _run(tmp_path, {"remote_share": 0.3594, "remote_spend_ratio": 0.3577}, chosen="classifier")
    assert "route figures reproduce" in printed
    assert "this run chose classifier" in printed
    assert "± 0.1142" in printed  # 2 × sqrt(0.2969 × 0.7031 / 64)


def test_a_share_eight_requests_off_fails(tmp_path):
    with pytest.raises(StageFailed, match=r"cascade remote_share \(reported 0.2969, measured 0.4219, ± 0.1142\)"):
        _run(tmp_path, {"remote_share": 0.4219})


def test_quality_keeps_its_absolute_margin(tmp_path):
    with pytest.raises(StageFailed, match="quality"):
        _run(tmp_path, {"quality": 0.6275})
    assert "route figures reproduce" in _run(tmp_path, {"quality": 0.6475})


def test_the_margin_never_falls_below_the_absolute_one():
    tol = dict(route_check.DEFAULT_TOLERANCES)
    assert route_check._margin("remote_share", 0.0, 64, tol) == 0.05  # no spread at p = 0
    assert route_check._margin("remote_share", 0.3, 10_000, tol) == 0.05  # many requests: s.e. tiny
    assert route_check._margin("quality", 0.5, 64, tol) == 0.05  # not a share
