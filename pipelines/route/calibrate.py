"""Fitting a router and its threshold on one part of the items, and judging it on another it never saw.

Cross-fitting, because a task's bench set is small: the items are shuffled (seeded) into k folds; for each
fold the router is fitted on the other k-1, its threshold calibrated on them too (from scores the router gave
those items while they were held out of an inner k-fold fit, so the threshold never sees in-sample scores,
which a classifier makes overconfident), and the held-out fold is routed with both. Every item is then
routed exactly once by a router that never saw it; the held-out figures come from those decisions. The
router written to router.json is fitted on every item, its threshold calibrated on the out-of-fold scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import StrictModel
from slmkit.pipelines.route.routers import Router, RouterConfig, make_router, ranking

NEVER, ALWAYS = 1.0, -1.0  # thresholds on a probability: nothing above 1.0, everything above -1.0


class Goal(StrictModel):
    """What the threshold is chosen for; exactly one."""

    max_remote_share: float | None = Field(None, ge=0, le=1, description="this share of requests remote at most, "
                                           "spent on the requests the router ranks highest")
    min_quality: float | None = Field(None, description="at least this mean quality (the task's metric)")
    min_quality_of_remote: float | None = Field(None, gt=0, description="at least this fraction of remote-only "
                                                                        "quality (e.g. 0.95)")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of max_remote_share, min_quality, min_quality_of_remote "
                             f"(got {', '.join(given) or 'none'})")
        return self

    def wanted_quality(self, remote_only: float) -> float:
        """A quality goal as an absolute figure, given remote-only's quality on the same requests."""
        return self.min_quality if self.min_quality is not None else self.min_quality_of_remote * remote_only

    def describe(self) -> str:
        if self.max_remote_share is not None:
            return f"at most {self.max_remote_share:.0%} of requests remote"
        if self.min_quality is not None:
            return f"quality at least {self.min_quality}"
        return f"quality at least {self.min_quality_of_remote:.0%} of remote-only"


@dataclass
class Choice:
    threshold: float
    met: bool
    share: float  # on the items it was chosen on
    quality: float
    best: str | None = None  # when not met: the best that can be had, in words


def _points(scores: np.ndarray, forced: np.ndarray, local_q: np.ndarray, remote_q: np.ndarray):
    """(threshold, share, quality) for every threshold that makes a different decision."""
    cands = [NEVER, *sorted(set(scores.tolist()), reverse=True), ALWAYS]
    for t in cands:
        remote = forced | (scores > t)
        yield t, float(remote.mean()), float(np.where(remote, remote_q, local_q).mean())


def choose(goal: Goal, scores: np.ndarray, forced: np.ndarray, local_q: np.ndarray, remote_q: np.ndarray) -> Choice:
    pts = list(_points(scores, forced, local_q, remote_q))
    if goal.max_remote_share is not None:
        ok = [p for p in pts if p[1] <= goal.max_remote_share + 1e-12]
        if not ok:
            low = min(pts, key=lambda p: p[1])
            return Choice(low[0], False, low[1], low[2],
                          f"the fewest remote calls this router makes is {low[1]:.0%} (answers that fail "
                          f"validation always escalate), at quality {low[2]:.3f}")
        # The budget is spent (as RouteLLM calibrates a threshold to a share of strong-model calls): the router
        # sends its highest-ranked requests remote up to the share. To spend only what raises quality, set a
        # quality goal instead. A router with nothing to rank by (every score equal: it never saw the remote
        # do better) escalates nothing, since no threshold splits a tie.
        t, share, q = max(ok, key=lambda p: (p[1], p[2]))
        return Choice(t, True, share, q)
    want = goal.wanted_quality(float(remote_q.mean()))
    ok = [p for p in pts if p[2] >= want - 1e-12]
    if not ok:
        best = max(pts, key=lambda p: (p[2], -p[1]))
        return Choice(best[0], False, best[1], best[2],
                      f"the best quality this router reaches is {best[2]:.3f} at {best[1]:.0%} remote "
                      f"(target {want:.3f})")
    t, share, q = min(ok, key=lambda p: (p[1], -p[2]))
    return Choice(t, True, share, q)


def folds_of(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index per item: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    if n < 2 * k:
        raise SlmkitError(f"route: {n} items are too few for {k}-fold cross-fitting (each fitting split would "
                          f"be empty or a single item); give at least {2 * k} items or lower route.folds")
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=int)
    fold[order] = np.arange(n) % k
    return fold


def _quality(rows: list[dict], path: str) -> np.ndarray:
    return np.array([r[path]["score"] for r in rows], dtype=float)


def out_of_fold(cfg: RouterConfig, rows: list[dict], k: int, seed: int, embedder=None) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ranking score from a router fitted without it; and the forced flags."""
    scores = np.zeros(len(rows))
    fold = folds_of(len(rows), k, seed)
    for f in range(k):
        train = [r for r, g in zip(rows, fold, strict=True) if g != f]
        test_idx = np.nonzero(fold == f)[0]
        router = make_router(cfg).fit(train, embedder)
        scores[test_idx] = router.scores([rows[i] for i in test_idx], embedder)
    return scores, make_router(cfg).forced(rows)


@dataclass
class CrossFit:
    decisions: np.ndarray  # held-out: True = remote
    ranking: np.ndarray  # held-out ranking scores (forced first), for the curve
    thresholds: list[float]
    final: Router
    final_choice: Choice


def cross_fit(cfg: RouterConfig, rows: list[dict], goal: Goal, k: int, seed: int, embedder=None) -> CrossFit:
    local_q, remote_q = _quality(rows, "local"), _quality(rows, "remote")
    probe = make_router(cfg)
    if not probe.learned:  # rules: nothing to fit or calibrate, the same decisions everywhere
        s = probe.scores(rows, embedder)
        remote = probe.forced(rows) | (s > 0.5)
        choice = Choice(0.5, _meets(goal, remote, local_q, remote_q), float(remote.mean()),
                        float(np.where(remote, remote_q, local_q).mean()))
        return CrossFit(remote, ranking(probe, rows, embedder), [0.5], probe, choice)
    fold = folds_of(len(rows), k, seed)
    decisions = np.zeros(len(rows), dtype=bool)
    rank = np.zeros(len(rows))
    thresholds = []
    for f in range(k):
        train_idx, test_idx = np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]
        train, test = [rows[i] for i in train_idx], [rows[i] for i in test_idx]
        router = make_router(cfg).fit(train, embedder)
        inner_scores, inner_forced = out_of_fold(cfg, train, k, seed + 1 + f, embedder)
        t = choose(goal, inner_scores, inner_forced, local_q[train_idx], remote_q[train_idx]).threshold
        thresholds.append(t)
        s = router.scores(test, embedder)
        forced = router.forced(test)
        decisions[test_idx] = forced | (s > t)
        rank[test_idx] = np.where(forced, 2.0 + s, s)
    oof_scores, oof_forced = out_of_fold(cfg, rows, k, seed, embedder)
    final_choice = choose(goal, oof_scores, oof_forced, local_q, remote_q)
    return CrossFit(decisions, rank, thresholds, make_router(cfg).fit(rows, embedder), final_choice)


def _meets(goal: Goal, remote: np.ndarray, local_q: np.ndarray, remote_q: np.ndarray) -> bool:
    q = float(np.where(remote, remote_q, local_q).mean())
    if goal.max_remote_share is not None:
        return float(remote.mean()) <= goal.max_remote_share + 1e-12
    want = goal.wanted_quality(float(remote_q.mean()))
    return q >= want - 1e-12
