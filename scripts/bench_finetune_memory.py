"""Benchmark finetune's memory budget: measured peak of every plan against the stage's own estimate, and the
loss curve of a budgeted run against the unbudgeted one. Writes bench-results/finetune_memory.json.

    python scripts/bench_finetune_memory.py                    # SmolLM2-135M, the demo's settings (batch 8, LoRA r=16)
    python scripts/bench_finetune_memory.py --data runs/demo/02_distill/train.jsonl --budget 2.3GB

Each plan (micro-batch 8, 4, 2, 1 × with and without gradient checkpointing, effective batch 8) trains a few
steps in a fresh subprocess; its figure is that process's peak RSS (VmHWM), which covers importing torch and
loading the model too, as the estimate does. The curve comparison trains the same steps twice in two more
subprocesses, with memory_budget null and with the budget given, and reports each step's loss.
Goal (issue 18): every estimate within 20% of its measured peak; the budgeted demo run under 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from rich.console import Console
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.finetune import FinetuneConfig, train
tmp = Path(tempfile.mkdtemp()); out = tmp / "out"; (out / ".state").mkdir(parents=True)
ctx = StageContext(stage="finetune", out=out, state=out / ".state", cache=tmp / "c", upstream={}, fingerprint="mem",
                   console=Console(quiet=True))
cfg = FinetuneConfig.model_validate(json.loads(sys.argv[1]))
start = time.perf_counter()
o = train(cfg, ctx)
seconds = time.perf_counter() - start
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
curve = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
print("RESULT", json.dumps({"peak_mb": int(st["VmHWM"].split()[0]) * 1024 / 1e6, "seconds": seconds,
                            "estimate": o.metrics["memory_estimate"],
                            "losses": [r["loss"] for r in curve if "loss" in r]}))
"""


def child(cfg: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        raise SystemExit(f"child failed: {(res.stderr or res.stdout)[-1500:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=ROOT / "recipes" / "data" / "tickets_eval.jsonl",
                    help="demo tickets (prompt+answer) or an SFT JSONL (e.g. the demo's distill output)")
    ap.add_argument("--batch", type=int, default=8, help="effective batch (the demo's)")
    ap.add_argument("--steps", type=int, default=3, help="steps per plan")
    ap.add_argument("--curve-steps", type=int, default=8, help="steps of the budgeted vs unbudgeted curve")
    ap.add_argument("--budget", default="2.3GB", help="the budget of the curve comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "finetune_memory.json")
    args = ap.parse_args()

    from bench_finetune import demo_conversations

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.jsonl"
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in demo_conversations(args.data)))
        base = {"model": args.model, "data": str(data), "max_steps": args.steps, "save_every": 10_000,
                "eval_fraction": 0.0, "keep": "last", "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
                "memory_budget": None}
        plans = []
        for micro in [m for m in (8, 4, 2, 1) if args.batch % m == 0]:
            for ckpt in (False, True):
                r = child({**base, "batch_size": micro, "grad_accum": args.batch // micro,
                           "gradient_checkpointing": ckpt}, args.threads)
                est = r["estimate"]["total_mb"]
                plans.append({"micro_batch": micro, "grad_accum": args.batch // micro, "checkpointing": ckpt,
                              "measured_peak_mb": round(r["peak_mb"], 1), "estimate_mb": est,
                              "estimate_over_measured": round(est / r["peak_mb"], 3),
                              "seconds_per_step": round(r["seconds"] / args.steps, 2), "estimate": r["estimate"]})
                print(json.dumps(plans[-1]), file=sys.stderr)
        curve = {**base, "batch_size": args.batch, "max_steps": args.curve_steps}
        free = child(curve, args.threads)
        budgeted = child({**curve, "memory_budget": args.budget}, args.threads)
    diffs = [abs(a - b) for a, b in zip(free["losses"], budgeted["losses"], strict=True)]
    within = [abs(p["estimate_over_measured"] - 1) <= 0.2 for p in plans]
    out = {
        "bench": "finetune_memory", "model": args.model, "data": str(args.data), "effective_batch": args.batch,
        "plans": plans,
        "estimate_within_20_percent": f"{sum(within)}/{len(within)}",
        "curve": {"budget": args.budget, "plan": budgeted["estimate"], "steps": args.curve_steps,
                  "unbudgeted_peak_mb": round(free["peak_mb"], 1), "budgeted_peak_mb": round(budgeted["peak_mb"], 1),
                  "unbudgeted_losses": free["losses"], "budgeted_losses": budgeted["losses"],
                  "max_abs_loss_difference": max(diffs), "unbudgeted_seconds": round(free["seconds"], 1),
                  "budgeted_seconds": round(budgeted["seconds"], 1)},
        "host": {"python": sys.version.split()[0], "machine": platform.machine(), "threads": args.threads,
                 "load_average": [round(x, 2) for x in os.getloadavg()]},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
