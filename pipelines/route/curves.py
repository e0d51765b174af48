"""Quality against the share of remote calls, and the figures read off that curve.

A router ranks the items by an escalation score (higher: more reason to ask the remote model). Sending the
top n of N items remote gives one point (n/N, mean quality of the chosen answers). Items with equal scores
cannot be told apart, so within a group of ties the curve is the expected value of sending a random part of
the group: a straight line across the group. A router that only says yes or no (rules) is then two segments
through its one operating point.

  PGR(f)  = (q(f) - q_local) / (q_remote - q_local)   the part of the gap between local-only and remote-only
  APGR    = the mean of PGR over f in [0, 1] (trapezoids over the N+1 points); the random router's is 0.5
  CPT(x)  = the least share of remote calls with PGR >= x (RouteLLM's "call-performance threshold")
  AIQ     = the mean quality over f in [0, 1] (RouterBench's average improvement in quality, without the convex
            hull); the random router's is the mean of local-only and remote-only. It needs no gap, so it still
            ranks routers when the remote is no better on average but better on some requests.
The oracle sends exactly the items whose remote answer scores higher, largest gain first. When remote-only is
no better than local-only the gap is not a gap, and PGR, APGR and CPT are left undefined (None), not forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_GAP = 1e-9  # below this, remote-only and local-only count as equal


@dataclass
class Curve:
    share: np.ndarray  # n/N for n = 0..N
    quality: np.ndarray


def curve(scores: np.ndarray, local_q: np.ndarray, remote_q: np.ndarray) -> Curve:
    """Quality when the k highest-scoring items go remote, k = 0..N, ties taken as a random part of their group."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    gain = (remote_q - local_q)[order]
    s = scores[order]
    cum = np.zeros(n + 1)
    start = 0
    while start < n:  # tie groups: spread the group's total gain evenly over its members
        end = start + 1
        while end < n and s[end] == s[start]:
            end += 1
        mean_gain = gain[start:end].mean()
        cum[start + 1:end + 1] = cum[start] + mean_gain * np.arange(1, end - start + 1)
        start = end
    return Curve(np.arange(n + 1) / n, (local_q.sum() + cum) / n)


def oracle_scores(local_q: np.ndarray, remote_q: np.ndarray) -> np.ndarray:
    """The oracle's ranking: the remote's gain on each item (it knows both answers' quality)."""
    return remote_q - local_q


def gap(local_q: np.ndarray, remote_q: np.ndarray) -> float:
    return float(remote_q.mean() - local_q.mean())


def pgr(c: Curve, local_q: np.ndarray, remote_q: np.ndarray) -> np.ndarray | None:
    g = gap(local_q, remote_q)
    if g <= MIN_GAP:
        return None
    return (c.quality - local_q.mean()) / g


def apgr(c: Curve, local_q: np.ndarray, remote_q: np.ndarray) -> float | None:
    p = pgr(c, local_q, remote_q)
    if p is None:
        return None
    return float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(c.share)))


def aiq(c: Curve) -> float:
    return float(np.sum((c.quality[1:] + c.quality[:-1]) / 2 * np.diff(c.share)))


def aiq_over_random(c: Curve, local_q: np.ndarray, remote_q: np.ndarray) -> float:
    return aiq(c) - float(local_q.mean() + remote_q.mean()) / 2


def cpt(c: Curve, local_q: np.ndarray, remote_q: np.ndarray, level: float) -> float | None:
    """The least share of remote calls whose PGR reaches `level` (interpolated between points)."""
    p = pgr(c, local_q, remote_q)
    if p is None:
        return None
    hit = np.nonzero(p >= level - 1e-12)[0]
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return 0.0
    x0, x1, y0, y1 = c.share[i - 1], c.share[i], p[i - 1], p[i]
    return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0)) if y1 != y0 else float(x1)


def summary(scores: np.ndarray, local_q: np.ndarray, remote_q: np.ndarray) -> dict:
    c = curve(scores, local_q, remote_q)
    return {"apgr": apgr(c, local_q, remote_q), "cpt50": cpt(c, local_q, remote_q, 0.5),
            "cpt80": cpt(c, local_q, remote_q, 0.8), "aiq": aiq(c),
            "aiq_over_random": aiq_over_random(c, local_q, remote_q), "best_quality": float(c.quality.max())}


def bootstrap(stat, n_items: int, seed: int, n_boot: int = 1000) -> np.ndarray:
    """`stat(idx)` over `n_boot` resamples of the items with replacement; the None results are dropped."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n_items, n_items)) for _ in range(n_boot)]
    return np.array([v for v in vals if v is not None], dtype=float)


def interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    if len(values) == 0:
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]
