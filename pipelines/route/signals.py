"""What the local model's own answer says about itself: validity and confidence.

Confidence comes from the per-token log-probabilities of the answer, summarised by quantiles and the minimum.
Their sum (the sequence log-likelihood) is not used: it falls with every token, so a longer correct answer
would look less sure than a short wrong one. The low quantiles catch the one token the model hesitated on (a
guessed order id, an urgency it was unsure of), which is where a structured answer goes wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.05, 0.1, 0.25, 0.5)
FLOOR = -30.0  # a token llama.cpp gives probability 0 (log -inf) counts as this
NAMES = ("valid", "lp_min", *(f"lp_q{int(q * 100):02d}" for q in QUANTILES), "lp_mean")


def token_logprobs(logprobs: list[dict[str, float]] | None) -> list[float]:
    """The sampled token's log-probability per answer token (the first entry of each top-k mapping)."""
    return [max(FLOOR, next(iter(t.values()))) for t in logprobs or [] if t]


def features(valid: bool, lps: list[float]) -> dict[str, float]:
    """The cascade's inputs for one answer; an answer with no tokens has the floor for each."""
    arr = np.array(lps or [FLOOR], dtype=float)
    out: dict[str, float] = {"valid": float(valid), "lp_min": float(arr.min())}
    for q in QUANTILES:
        out[f"lp_q{int(q * 100):02d}"] = float(np.quantile(arr, q))
    out["lp_mean"] = float(arr.mean())
    return out


def vector(feats: dict[str, Any]) -> list[float]:
    return [float(feats[n]) for n in NAMES]
