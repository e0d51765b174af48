"""What a set of routing decisions comes to: quality, share of remote calls, cost, and the first token's wait.

Cost per request is what was really spent: a cascade pays the local attempt on every request and the remote
call on those it escalates; a router that decides first pays one of the two. The blended $/1M tokens divides
that by the tokens of the answers given; the monthly figure is the mean cost per request times the recipe's
traffic. Time to first token per path, as a client of the served router would wait for it: for a router that
decides first, the chosen model's own TTFT; for a cascade, the local answer is held until it is checked
(validity, confidence), so a local answer arrives at the local end-to-end time and an escalated one after
the whole local attempt plus the remote's TTFT.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slmkit.pipelines.route import curves


def _arr(rows: list[dict], path: str, key: str) -> np.ndarray:
    return np.array([np.nan if r[path].get(key) is None else float(r[path][key]) for r in rows], dtype=float)


def per_request(rows: list[dict], remote: np.ndarray, after_local: bool) -> dict[str, np.ndarray]:
    lq, rq = _arr(rows, "local", "score"), _arr(rows, "remote", "score")
    lc, rc = _arr(rows, "local", "cost_usd"), _arr(rows, "remote", "cost_usd")
    ltok = _arr(rows, "local", "prompt_tokens") + _arr(rows, "local", "completion_tokens")
    rtok = _arr(rows, "remote", "prompt_tokens") + _arr(rows, "remote", "completion_tokens")
    l_ttft, l_e2e, r_ttft = _arr(rows, "local", "ttft_s"), _arr(rows, "local", "e2e_s"), _arr(rows, "remote", "ttft_s")
    if after_local:
        cost = lc + np.where(remote, rc, 0.0)
        ttft = np.where(remote, l_e2e + r_ttft, l_e2e)
    else:
        cost = np.where(remote, rc, lc)
        ttft = np.where(remote, r_ttft, l_ttft)
    return {"quality": np.where(remote, rq, lq), "cost": cost, "tokens": np.where(remote, rtok, ltok),
            "ttft_ms": ttft * 1000, "remote": remote.astype(bool)}


def _pct(values: np.ndarray, q: float) -> float | None:
    v = values[~np.isnan(values)]
    return round(float(np.percentile(v, q)), 1) if len(v) else None


def figures(rows: list[dict], remote: np.ndarray, after_local: bool, queries_per_month: int,
            seed: int, n_boot: int = 1000) -> dict[str, Any]:
    """The operating point's figures with 95% bootstrap intervals over requests."""
    pr = per_request(rows, remote, after_local)
    all_remote = _arr(rows, "remote", "cost_usd")
    priced = not (np.isnan(pr["cost"]).any() or np.isnan(all_remote).any())

    def cut(idx: np.ndarray) -> float | None:
        base = all_remote[idx].sum()
        return None if not priced or base <= 0 else float(1 - pr["cost"][idx].sum() / base)

    n = len(rows)
    out: dict[str, Any] = {
        "quality": round(float(pr["quality"].mean()), 4),
        "quality_ci": curves.interval(curves.bootstrap(lambda i: pr["quality"][i].mean(), n, seed, n_boot)),
        "remote_share": round(float(pr["remote"].mean()), 4),
        "remote_share_ci": curves.interval(curves.bootstrap(lambda i: pr["remote"][i].mean(), n, seed, n_boot)),
        "requests": n,
    }
    if priced:
        mean_cost = float(pr["cost"].mean())
        out.update(
            cost_per_request_usd=round(mean_cost, 8),
            cost_per_1m_tokens_usd=round(float(pr["cost"].sum() / np.nansum(pr["tokens"]) * 1e6), 6),
            monthly_cost_usd=round(mean_cost * queries_per_month, 2),
            all_remote_monthly_cost_usd=round(float(all_remote.mean()) * queries_per_month, 2),
            cost_cut=round(cut(np.arange(n)), 4),
            # The remote calls' spend against all-remote's: tokens at list prices only, so it does not move with
            # the machine (the local part of cost_cut is this machine's time at its hourly price).
            remote_spend_ratio=round(float(np.where(pr["remote"], all_remote, 0.0).sum() / all_remote.sum()), 4),
            cost_cut_ci=curves.interval(curves.bootstrap(cut, n, seed, n_boot)),
        )
    else:
        out["cost_note"] = "a price is missing (the remote's price_*_per_1m or cost.hardware_usd_per_hour)"
    ttft = {"overall": {"p50": _pct(pr["ttft_ms"], 50), "p95": _pct(pr["ttft_ms"], 95)}}
    for name, mask in (("local", ~pr["remote"]), ("remote", pr["remote"])):
        ttft[name] = {"p50": _pct(pr["ttft_ms"][mask], 50), "p95": _pct(pr["ttft_ms"][mask], 95),
                      "requests": int(mask.sum())}
    out["ttft_ms"] = ttft
    return out


def by_group(rows: list[dict], remote: np.ndarray) -> dict[str, dict[str, Any]]:
    """Share remote and quality per traffic group (e.g. language), when the traffic names groups."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("group") is not None:
            groups.setdefault(str(r["group"]), []).append(i)
    lq, rq = _arr(rows, "local", "score"), _arr(rows, "remote", "score")
    out = {}
    for g, idx in sorted(groups.items()):
        ix = np.array(idx)
        out[g] = {"requests": len(ix), "remote_share": round(float(remote[ix].mean()), 4),
                  "quality": round(float(np.where(remote[ix], rq[ix], lq[ix]).mean()), 4),
                  "local_only": round(float(lq[ix].mean()), 4), "remote_only": round(float(rq[ix].mean()), 4)}
    return out
