"""Routing logic on synthetic bench rows whose right answers are known: curves, APGR, calibration, routers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.route import curves, evaluate
from slmkit.pipelines.route.calibrate import Goal, choose, cross_fit, folds_of
from slmkit.pipelines.route.routers import RouterConfig, decide, make_router
from slmkit.pipelines.route.signals import features


def _row(i: int, hard: bool, rng, valid: bool = True, text: str | None = None) -> dict:
    # A hard request: the local model hesitates on some token (low quantiles) and gets it wrong; the remote is
    # right. An easy one: confident and right on both.
    lps = list(rng.normal(-0.05, 0.02, 30).clip(max=0))
    if hard:
        lps[5] = -4.0 + rng.normal(0, 0.3)
        lps[17] = -3.0 + rng.normal(0, 0.3)
    return {"id": f"i{i}", "text": text or f"request {i}", "metadata": {},
            "local": {"score": 0.0 if hard else 1.0, "cost_usd": 1e-6, "prompt_tokens": 50, "completion_tokens": 30,
                      "ttft_s": 0.05, "e2e_s": 0.5},
            "remote": {"score": 1.0, "cost_usd": 1e-4, "prompt_tokens": 500, "completion_tokens": 30,
                       "ttft_s": 0.2, "e2e_s": 1.0},
            "signals": features(valid, lps)}


@pytest.fixture
def rows():
    rng = np.random.default_rng(7)
    hard = rng.random(100) < 0.3
    return [_row(i, bool(h), rng) for i, h in enumerate(hard)]


def test_curve_ties_are_a_straight_line_and_the_oracle_is_best():
    lq, rq = np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 0.0])
    flat = curves.curve(np.zeros(4), lq, rq)  # one tie group: the random line
    assert flat.quality.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5])
    assert curves.apgr(flat, lq, rq) is None  # remote-only == local-only: no gap, no APGR
    lq2, rq2 = np.array([1.0, 0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0])
    oracle = curves.curve(curves.oracle_scores(lq2, rq2), lq2, rq2)
    assert oracle.quality.tolist() == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    rand = curves.curve(np.zeros(4), lq2, rq2)
    assert curves.apgr(rand, lq2, rq2) == pytest.approx(0.5)
    assert curves.apgr(oracle, lq2, rq2) == pytest.approx(0.75)
    assert curves.cpt(oracle, lq2, rq2, 0.5) == pytest.approx(0.25)
    lq3, rq3 = np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])  # the remote loses one item
    best = curves.curve(curves.oracle_scores(lq3, rq3), lq3, rq3)
    assert best.quality.tolist() == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.75])
    assert curves.apgr(best, lq3, rq3) == pytest.approx(1.375)  # the oracle beats remote-only on the way


def test_a_rule_sends_its_match_remote_and_the_rest_default():
    cfg = RouterConfig(kind="rules", rules=[{"when": {"regex": "(?i)refund"}, "route": "remote"},
                                            {"when": {"field": "tier", "equals": "vip"}, "route": "remote"},
                                            {"when": {"max_chars": 5}, "route": "local"}], default="local")
    r = make_router(cfg)
    assert r.route("Please REFUND me", {}) == ("remote", "rule 0")
    assert r.route("hello there", {"tier": "vip"}) == ("remote", "rule 1")
    assert r.route("hi", {"tier": "vip"}) == ("remote", "rule 1")  # first match wins
    assert r.route("a long enough request", {}) == ("local", "default")
    rows = [{"text": "refund please"}, {"text": "nothing"}]
    assert decide(r, rows, 0.5).tolist() == [True, False]


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="not a regular expression"):
        RouterConfig(kind="rules", rules=[{"when": {"regex": "("}, "route": "remote"}])
    with pytest.raises(ValueError, match="needs `rules`"):
        RouterConfig(kind="rules")
    with pytest.raises(ValueError, match="need a `field`"):
        RouterConfig(kind="rules", rules=[{"when": {"equals": 3}, "route": "remote"}])


def test_cascade_finds_the_known_threshold_on_held_out_items(rows):
    hard = np.array([r["local"]["score"] == 0 for r in rows])
    cf = cross_fit(RouterConfig(kind="cascade"), rows, Goal(min_quality=0.99), 5, 0)
    # The hesitant answers are exactly the wrong ones: the least remote share that reaches the quality escalates
    # them and nothing else.
    assert (cf.decisions == hard).mean() >= 0.95
    lq, rq = np.zeros(100) + [r["local"]["score"] for r in rows], np.ones(100)
    # A perfect ranking recovers the whole gap by the 30% hard share: APGR 1 - 0.3 / 2 = 0.85 at best.
    assert curves.apgr(curves.curve(cf.ranking, lq, rq), lq, rq) >= 0.84
    fig = evaluate.figures(rows, cf.decisions, True, 1000, seed=0, n_boot=200)
    assert fig["quality"] >= 0.97 and abs(fig["remote_share"] - hard.mean()) <= 0.05


def test_a_share_goal_holds_on_held_out_items(rows):
    for share in (0.1, 0.2, 0.3):  # the budget is spent
        cf = cross_fit(RouterConfig(kind="cascade"), rows, Goal(max_remote_share=share), 5, 1)
        assert abs(cf.decisions.mean() - share) <= 0.05


def test_invalid_answers_always_escalate_and_an_impossible_share_says_the_best(rows):
    rng = np.random.default_rng(3)
    rows = rows[:60] + [_row(100 + i, False, rng, valid=False) for i in range(40)]  # 40% invalid
    router = make_router(RouterConfig(kind="cascade")).fit(rows)
    assert decide(router, rows, threshold=1.0)[60:].all()  # even at the threshold that escalates no valid one
    scores = router.scores(rows)
    c = choose(Goal(max_remote_share=0.2), scores, router.forced(rows), np.zeros(100), np.ones(100))
    assert not c.met and "fewest remote calls this router makes is 40%" in c.best


def test_a_quality_goal_takes_the_fewest_remote_calls(rows):
    lq = np.array([r["local"]["score"] for r in rows])
    router = make_router(RouterConfig(kind="cascade")).fit(rows)
    c = choose(Goal(min_quality=0.99), router.scores(rows), router.forced(rows), lq, np.ones(100))
    assert c.met and c.quality >= 0.99 and c.share <= (1 - lq).mean() + 0.05
    c = choose(Goal(min_quality=1.5), router.scores(rows), router.forced(rows), lq, np.ones(100))
    assert not c.met and "best quality this router reaches is 1.000" in c.best


def test_when_the_remote_is_never_better_everything_stays_local(rows):
    for r in rows:
        r["remote"]["score"] = min(r["remote"]["score"], r["local"]["score"])
    cf = cross_fit(RouterConfig(kind="cascade"), rows, Goal(max_remote_share=0.3), 5, 0)
    assert not cf.decisions.any()


def test_classifier_learns_from_the_request_alone(rows):
    class WordEmbedder:  # stands in for MiniLM: a request's words as a bag
        def embed(self, texts):
            return np.array([[("hard" in t) * 1.0, ("easy" in t) * 1.0, len(t) / 100] for t in texts])

    for r in rows:
        r["text"] = ("hard " if r["local"]["score"] == 0 else "easy ") + r["text"]
    hard = np.array([r["local"]["score"] == 0 for r in rows])
    cf = cross_fit(RouterConfig(kind="classifier"), rows, Goal(min_quality=0.99), 5, 0, WordEmbedder())
    assert (cf.decisions == hard).mean() >= 0.95


def test_too_few_items_for_the_folds_is_a_clear_error():
    with pytest.raises(SlmkitError, match="too few for 5-fold cross-fitting"):
        folds_of(9, 5, 0)
    fold = folds_of(23, 5, 0)
    assert sorted(np.bincount(fold).tolist()) == [4, 4, 5, 5, 5]


def test_cascade_costs_both_calls_and_waits_for_the_whole_local_answer(rows):
    remote = np.array([True] + [False] * (len(rows) - 1))
    pr = evaluate.per_request(rows, remote, after_local=True)
    assert pr["cost"][0] == pytest.approx(1e-6 + 1e-4) and pr["cost"][1] == pytest.approx(1e-6)
    assert pr["ttft_ms"][0] == pytest.approx(700) and pr["ttft_ms"][1] == pytest.approx(500)
    first = evaluate.per_request(rows, remote, after_local=False)
    assert first["cost"][0] == pytest.approx(1e-4) and first["ttft_ms"][0] == pytest.approx(200)


def _bench_json(tmp_path, kinds=("gguf", "openai")) -> Path:
    import json

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    targets = []
    for kind in kinds:
        spec = ({"label": "slm", "kind": "gguf", "path": str(gguf)} if kind == "gguf" else
                {"label": "llm", "kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                 "price_input_per_1m": 0.15, "price_output_per_1m": 0.6})
        targets.append({"label": spec["label"], "kind": kind, "status": "ok", "spec": spec,
                        **({"model": str(gguf)} if kind == "gguf" else {})})
    data = tmp_path / "traffic.jsonl"
    data.write_text("".join(json.dumps({"id": f"i{i}", "prompt": f"request {i}", "answer": "x"}) + "\n"
                            for i in range(100)))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"baseline": "llm", "targets": targets, "cost": {"hardware_usd_per_hour": 0.09},
                                "task": {"data": str(data), "metric": "exact_match", "max_tokens": 8,
                                         "stop": []}}))
    return path


def _ctx(tmp_path):
    from rich.console import Console

    from slmkit.pipelines.core.stage import StageContext

    out = tmp_path / "out"
    out.mkdir()
    return StageContext(stage="route", out=out, state=out / ".state", cache=tmp_path / "cache", upstream={},
                        fingerprint="t", seed=0, console=Console(width=200))


def test_the_stage_writes_its_report_and_router_file(tmp_path, monkeypatch, rows):
    import json

    from slmkit.pipelines import route
    from slmkit.pipelines.route import data

    monkeypatch.setattr(data, "gather", lambda *a, **k: rows)
    cfg = route.RouteConfig(bench=_bench_json(tmp_path), routers=[{"kind": "cascade"},
                            {"kind": "rules", "rules": [{"when": {"regex": "9"}, "route": "remote"}]}],
                            goal={"min_quality": 0.95})
    outcome = route.run(cfg, _ctx(tmp_path))
    out = tmp_path / "out"
    assert {"route.json", "route.md", "route.png", "router.json", "route_data.jsonl"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "route.json").read_text())
    assert summary["chosen"] == "cascade" and outcome.metrics["quality"] >= 0.95
    assert summary["routers"]["cascade"]["apgr"] > summary["references"]["random"]["apgr"] == 0.5
    doc = route.load_router(out / "router.json")
    assert doc["router"]["config"]["kind"] == "cascade" and doc["local"]["sha256"]
    assert "Operating point (cascade)" in (out / "route.md").read_text()


def test_a_goal_no_router_holds_fails_the_stage_with_the_best_on_offer(tmp_path, monkeypatch, rows):
    from slmkit.pipelines import route
    from slmkit.pipelines.core.errors import StageFailed
    from slmkit.pipelines.route import data

    monkeypatch.setattr(data, "gather", lambda *a, **k: rows)
    cfg = route.RouteConfig(bench=_bench_json(tmp_path), routers=[{"kind": "cascade"}], goal={"min_quality": 1.5})
    with pytest.raises(StageFailed, match="no router holds 'quality at least 1.5'.*best quality this router"):
        route.run(cfg, _ctx(tmp_path))
    assert not (tmp_path / "out" / "router.json").exists()


def test_a_bench_without_a_remote_target_is_refused(tmp_path):
    from slmkit.pipelines import route

    cfg = route.RouteConfig(bench=_bench_json(tmp_path, kinds=("gguf",)))
    with pytest.raises(SlmkitError, match="route.remote: this recipe's bench has no remote"):
        route.run(cfg, _ctx(tmp_path))


def test_the_classifier_embeds_what_varies():
    from slmkit.pipelines.route.routers import shared_prefix

    texts = ["Extract the ticket.\n\nTicket:\nmy card was charged twice", "Extract the ticket.\n\nTicket:\nmy cat ran"]
    assert shared_prefix(texts) == "Extract the ticket.\n\nTicket:\nmy "  # cut at a boundary, not inside "my c"
    assert shared_prefix(["one text"]) == ""

    seen = []

    class Recorder:
        def embed(self, batch):
            seen.extend(batch)
            return np.array([[float(len(t))] for t in batch])

    rows = [{"text": t, "local": {"score": 1.0}, "remote": {"score": float(i)}} for i, t in enumerate(texts)]
    router = make_router(RouterConfig(kind="classifier")).fit(rows, Recorder())
    router.scores([{"text": "Extract the ticket.\n\nTicket:\nnew one"}, {"text": "other task"}], Recorder())
    assert seen[-2:] == ["Extract the ticket.\n\nTicket:\nnew one", "other task"]  # no shared prefix: kept whole
    assert seen[:2] == ["card was charged twice", "cat ran"]
