"""slmkit bench's own overhead (issue #7): decode tokens/s through bench's gguf backend against calling
llama-cpp-python directly on the same file, prompt and settings; plus transformers fp32 through the hf backend.
Writes bench-results/bench_overhead.json and prints it.

  python scripts/bench_overhead.py [--repeats 5] [--max-tokens 96] [--threads 2]

On SmolLM2-135M-Instruct: an F16 GGUF (slmkit's exporter, cached in slmkit's model cache) and a Q4_K_M made from
it (cached under bench-results/cache/). Both paths stream a chat completion greedily; runs alternate
slmkit / direct so that load from other processes on a shared machine hits both alike, and medians are
reported (the overhead is the median of per-pair ratios). Tokens are counted the same way on both sides
(the GGUF's tokenizer over the answer's text).
Target: slmkit within 5% of direct.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results"
MODEL = "smollm2-135m-instruct"
TARGET_OVERHEAD_PCT = 5.0


def _prompt() -> str:
    first = (ROOT / "recipes" / "data" / "tickets_eval.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return json.loads(first)["prompt"]


def _direct(llm, prompt: str, max_tokens: int) -> dict:
    """llama-cpp-python as a user would call it: stream a chat completion, time the first and last pieces."""
    start = time.perf_counter()
    first = None
    parts = []
    for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0.0, stream=True):
        piece = chunk["choices"][0].get("delta", {}).get("content") or ""
        if piece:
            first = first or time.perf_counter()
            parts.append(piece)
    end = time.perf_counter()
    text = "".join(parts)
    return {"text": text, "ttft_s": first - start, "e2e_s": end - start,
            "completion_tokens": len(llm.tokenize(text.encode(), add_bos=False, special=False))}


def _decode_tps(r: dict) -> float:
    return (r["completion_tokens"] - 1) / (r["e2e_s"] - r["ttft_s"])


def gguf_pair(path: Path, prompt: str, args, progress, task) -> dict:
    from llama_cpp import Llama

    from slmkit.pipelines.bench.targets import BenchClient, Target

    target = Target(label=path.stem, kind="gguf", location=str(path), model=None, api="chat", messages_prefix=[],
                    n_threads=args.threads, n_ctx=4096, api_key_env=None, tokenizer=None, timeout=120)
    ours = BenchClient(target)
    direct = Llama(model_path=str(path), n_ctx=4096, n_threads=args.threads, verbose=False)
    # One untimed warm-up each (page cache, first-call allocations), as bench does by default.
    ours.request(prompt, args.max_tokens, [])
    _direct(direct, prompt, args.max_tokens)
    runs: dict[str, list[dict]] = {"slmkit": [], "direct": []}
    def slmkit_once() -> dict:
        r = ours.request(prompt, args.max_tokens, [])
        return {"ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "completion_tokens": r.completion_tokens, "text": r.text}

    for i in range(args.repeats):
        # Pairs run back to back, in alternating order (AB, BA, ...), so a load swing from other processes
        # falls on both sides of a pair and a slow drift does not favour whichever side runs first.
        order = (("slmkit", slmkit_once), ("direct", lambda: _direct(direct, prompt, args.max_tokens)))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            runs[name].append(fn())
        progress.advance(task)
    ours.close()
    direct.close()
    same = runs["slmkit"][0]["text"] == runs["direct"][0]["text"]
    s = [_decode_tps(r) for r in runs["slmkit"]]
    d = [_decode_tps(r) for r in runs["direct"]]
    return {"file": str(path), "size_mb": round(path.stat().st_size / 2**20, 1), "same_answer": same,
            "completion_tokens": runs["slmkit"][0]["completion_tokens"],
            "slmkit_decode_tok_s": [round(x, 2) for x in s], "direct_decode_tok_s": [round(x, 2) for x in d],
            "slmkit_decode_tok_s_median": round(statistics.median(s), 2),
            "direct_decode_tok_s_median": round(statistics.median(d), 2),
            # Positive: slmkit slower than direct. The median of per-pair ratios is the headline (robust to load
            # swings between pairs); the ratio of medians is kept beside it.
            "overhead_pct": round(100 * (1 - statistics.median(a / b for a, b in zip(s, d, strict=True))), 2),
            "overhead_pct_of_medians": round(100 * (1 - statistics.median(s) / statistics.median(d)), 2)}


def hf_run(folder: str, prompt: str, args, progress, task) -> dict:
    from slmkit.pipelines.bench.targets import BenchClient, Target

    target = Target(label="hf", kind="hf", location=folder, model=None, api="chat", messages_prefix=[],
                    n_threads=args.threads, n_ctx=4096, api_key_env=None, tokenizer=None, timeout=120)
    hf = BenchClient(target)
    hf.request(prompt, 8, [])
    tps = []
    for _ in range(args.hf_repeats):
        r = hf.request(prompt, args.max_tokens, [])
        tps.append((r.completion_tokens - 1) / (r.e2e_s - r.ttft_s))
        progress.advance(task)
    return {"folder": folder, "dtype": "float32", "completion_tokens": r.completion_tokens,
            "decode_tok_s": [round(x, 2) for x in tps], "decode_tok_s_median": round(statistics.median(tps), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hf-repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from rich.progress import Progress

    from slmkit.pipelines.core import models
    from slmkit.pipelines.quantize import gguf_quant
    from slmkit.pipelines.serving.local_endpoint import served_gguf

    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    folder = models.resolve(MODEL)
    f16 = served_gguf(MODEL)  # slmkit's own F16 export, cached
    q4 = OUT / "cache" / f"{MODEL}-Q4_K_M.gguf"
    if not q4.is_file():
        gguf_quant.quantize(f16, q4, "Q4_K_M", threads=args.threads)
    prompt = _prompt()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": MODEL,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "n_threads": args.threads, "max_tokens": args.max_tokens, "repeats": args.repeats,
              "prompt_chars": len(prompt)}
    with Progress() as progress:
        for name, path in (("Q4_K_M", q4), ("F16", f16)):
            task = progress.add_task(f"gguf {name}: slmkit vs direct", total=args.repeats)
            result[name] = gguf_pair(path, prompt, args, progress, task)
        task = progress.add_task("hf fp32", total=args.hf_repeats)
        result["hf_fp32"] = hf_run(folder, prompt, args, progress, task)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["target_overhead_pct_max"] = TARGET_OVERHEAD_PCT
    result["within_target"] = all(result[q]["overhead_pct"] <= TARGET_OVERHEAD_PCT for q in ("Q4_K_M", "F16"))
    path = OUT / "bench_overhead.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    sys.exit(0)


if __name__ == "__main__":
    main()
