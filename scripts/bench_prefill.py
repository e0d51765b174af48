"""Prefill (time to first token, without the network) of GGUF files across prompt lengths and thread counts;
writes bench-results/prefill.json.

  python scripts/bench_prefill.py FILE.gguf [FILE.gguf ...] [--lengths 64 256 1024] [--threads 1 2] [--reps 5]

Every file is loaded once per thread count and the measurements are interleaved (file A, B, C, A, B, C … for
each prompt length and repetition), so a change of load on the machine touches every file alike and the ratios
between files hold. One measurement: reset the context, evaluate the prompt (llama.cpp's own batched prefill,
n_batch 512), sample nothing. The prompt is the shipped held-out text's tokens, cut to length. Medians and
p90 in milliseconds, and prompt tokens per second.
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


def _tokens(llm, n: int) -> list[int]:
    from slmkit.pipelines.quantize import HELDOUT_SAMPLE

    text = HELDOUT_SAMPLE.read_text(encoding="utf-8")
    ids = llm.tokenize(text.encode(), add_bos=True)
    while len(ids) < n:
        ids += ids[1:]
    return ids[:n]


def _prefill_s(llm, ids: list[int]) -> float:
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "prefill.json")
    args = ap.parse_args(argv)

    import llama_cpp

    n_ctx = max(args.lengths) + 8
    rows = []
    for threads in args.threads:
        llms = {f: llama_cpp.Llama(str(f), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, verbose=False) for f in args.files}
        for n in args.lengths:
            ids = _tokens(next(iter(llms.values())), n)
            for llm in llms.values():
                _prefill_s(llm, ids)  # warm-up: first use pages the weights in
            times: dict[Path, list[float]] = {f: [] for f in args.files}
            for _ in range(args.reps):
                for f, llm in llms.items():
                    times[f].append(_prefill_s(llm, ids))
            for f, ts in times.items():
                ms = sorted(t * 1000 for t in ts)
                med = statistics.median(ms)
                rows.append({"file": f.name, "bytes": f.stat().st_size, "threads": threads, "prompt_tokens": n,
                             "median_ms": round(med, 2), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2),
                             "prompt_tok_s": round(n / med * 1000, 1)})
                print(f"{f.name:28s} threads {threads}  {n:5d} tokens  {med:8.1f} ms  {n / med * 1000:8.0f} tok/s",
                      flush=True)
        for llm in llms.values():
            llm.close()
    out = {"files": [str(f) for f in args.files], "reps": args.reps, "rows": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "llama_cpp_python": llama_cpp.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
