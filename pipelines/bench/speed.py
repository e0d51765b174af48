"""Request timings -> the speed figures bench reports.

Definitions (per target, over the requests that succeeded):
  ttft_ms_p50/p95     time to first token (first chunk carrying text), percentiles of one sorted list,
                      so p95 >= p50 always
  e2e_ms_p50/p95      request start to the answer's end
  decode_tokens_per_s tokens after the first / time after the first token, summed over requests (a token
                      weighted mean: long answers count for what they are)
  prompt_tokens_per_s prompt tokens / time to first token, summed the same way; for an endpoint this
                      includes the network and any queueing, as a client sees it
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def speed_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    timed = [r for r in ok if r.get("ttft_s") is not None]
    ttft_ms = [r["ttft_s"] * 1000 for r in timed]
    e2e_ms = [r["e2e_s"] * 1000 for r in ok]
    decoding = [r for r in timed if r["completion_tokens"] >= 2 and r["e2e_s"] > r["ttft_s"]]
    decode_s = sum(r["e2e_s"] - r["ttft_s"] for r in decoding)
    prefill_s = sum(r["ttft_s"] for r in timed)
    n = len(ok)
    return {
        "requests": len(records),
        "ok": n,
        "ttft_ms_p50": _pct(ttft_ms, 50),
        "ttft_ms_p95": _pct(ttft_ms, 95),
        "e2e_ms_p50": _pct(e2e_ms, 50),
        "e2e_ms_p95": _pct(e2e_ms, 95),
        "decode_tokens_per_s": round(sum(r["completion_tokens"] - 1 for r in decoding) / decode_s, 2)
        if decode_s > 0 else None,
        "prompt_tokens_per_s": round(sum(r["prompt_tokens"] for r in timed) / prefill_s, 2) if prefill_s > 0 else None,
        "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in ok) / n, 2) if n else None,
        "mean_completion_tokens": round(sum(r["completion_tokens"] for r in ok) / n, 2) if n else None,
        "mean_e2e_s": round(sum(r["e2e_s"] for r in ok) / n, 4) if n else None,
        "token_source": sorted({r["token_source"] for r in ok}) or None,
        "ttft_ms": [round(v, 2) for v in ttft_ms],  # the distribution, for the latency plot
    }
