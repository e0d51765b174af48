"""Benchmark of the quantize stage on SmolLM2-135M-Instruct against issue #3's targets; writes
bench-results/quantize.json.

  python scripts/bench_quantize.py [--eval-tokens 2400] [--threads 2]

Measured, in order:
  1. export time and peak RSS of the HF → F16 GGUF export (in a child process, so RSS is the export's alone);
  then in two scenarios — "general" (the shipped English samples) and "domain" (the demo recipe's support
  tickets, split by record into disjoint calibration and held-out halves):
  2. F16 GGUF vs transformers on held-out text: mean KLD, top-1 agreement;
  3. Q4_K_M with and without an importance matrix vs F16: mean KLD, top-1 agreement, size ratio to F16, and
     the KLD reduction the importance matrix brings.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"f16_top1_min": 0.995, "f16_kld_max": 1e-3, "q4_kld_max": 0.05, "q4_top1_min": 0.93,
           "imatrix_kld_reduction_min": 0.40, "q4_size_ratio_max": 0.42, "export_s_max": 10.0,
           "export_rss_gb_max": 1.5, "eval_tokens_min": 2000}

DOMAIN = ROOT / "recipes" / "data" / "tickets_raw.jsonl"

_EXPORT_CHILD = """
import json, resource, sys, time
t = time.perf_counter()
from slmkit.pipelines.quantize.gguf_export import export
export(sys.argv[1], sys.argv[2], "f16")
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}))
"""


def _domain_split(tmp: Path) -> tuple[Path, Path]:
    """The demo recipe's raw support tickets, split by record (seeded) into disjoint calibration and held-out
    files: the case the importance matrix is for — calibrating on the domain the model will serve."""
    import random

    lines = [ln for ln in DOMAIN.read_text(encoding="utf-8").splitlines() if ln.strip()]
    random.Random(0).shuffle(lines)
    cut = len(lines) * 4 // 5
    calib, held = tmp / "domain-calib.jsonl", tmp / "domain-heldout.jsonl"
    calib.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    held.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    return calib, held


def _scenario(model_dir: Path, f16: Path, tmp: Path, name: str, calib: Path, heldout: Path, args) -> dict:
    from slmkit.pipelines import quantize
    from slmkit.pipelines.quantize import gguf_quant, retention

    t = time.perf_counter()
    calib_chunks = retention.token_chunks(model_dir, quantize.read_text(calib), args.calib_tokens, 512)
    imatrix = gguf_quant.compute_imatrix(model_dir, calib_chunks)
    imatrix_s = time.perf_counter() - t
    t = time.perf_counter()
    q_im = gguf_quant.quantize(f16, tmp / f"{name}-q4km-imatrix.gguf", "Q4_K_M", imatrix, args.threads)
    quant_s = time.perf_counter() - t
    q_plain = gguf_quant.quantize(f16, tmp / f"{name}-q4km-plain.gguf", "Q4_K_M", None, args.threads)

    chunks = retention.token_chunks(model_dir, quantize.read_text(heldout), args.eval_tokens, 512)
    n_ctx = max(len(c) for c in chunks)
    scorers = {"hf": retention.HFScorer(model_dir), "f16": retention.GGUFScorer(f16, n_ctx, args.threads),
               "q4_imatrix": retention.GGUFScorer(tmp / f"{name}-q4km-imatrix.gguf", n_ctx, args.threads),
               "q4_plain": retention.GGUFScorer(tmp / f"{name}-q4km-plain.gguf", n_ctx, args.threads)}
    t = time.perf_counter()
    try:
        figs = retention.compare(chunks, scorers, {"f16_vs_hf": ("hf", "f16"),
                                                   "q4km_imatrix_vs_f16": ("f16", "q4_imatrix"),
                                                   "q4km_plain_vs_f16": ("f16", "q4_plain")})
    finally:
        for s in scorers.values():
            s.close()
    score_s = time.perf_counter() - t
    f16_bytes = f16.stat().st_size
    fi, qi, qp = figs["f16_vs_hf"], figs["q4km_imatrix_vs_f16"], figs["q4km_plain_vs_f16"]
    reduction = 1 - qi["kld_mean"] / qp["kld_mean"]
    size_ratio = q_im["bytes"] / f16_bytes
    checks = {
        "f16_top1": fi["top1_agreement"] >= TARGETS["f16_top1_min"],
        "f16_kld": fi["kld_mean"] <= TARGETS["f16_kld_max"],
        "q4_kld": qi["kld_mean"] <= TARGETS["q4_kld_max"],
        "q4_top1": qi["top1_agreement"] >= TARGETS["q4_top1_min"],
        "imatrix_reduction": reduction >= TARGETS["imatrix_kld_reduction_min"],
        "q4_size_ratio": size_ratio <= TARGETS["q4_size_ratio_max"] and q_im["bytes"] == q_plain["bytes"],
        "eval_tokens": fi["tokens"] >= TARGETS["eval_tokens_min"],
    }
    return {"calib": str(calib if name == "general" else DOMAIN), "heldout": str(heldout if name == "general"
                                                                                  else DOMAIN),
            "calib_tokens": sum(len(c) for c in calib_chunks), "imatrix_seconds": imatrix_s,
            "quantize_seconds": quant_s, "scoring_seconds": score_s, "f16_bytes": f16_bytes,
            "q4km_bytes": q_im["bytes"], "q4km_plain_bytes": q_plain["bytes"], "q4km_size_ratio": size_ratio,
            "q4km_bits_per_weight": q_im["bits_per_weight"], "q4km_fallback_tensors": len(q_im["fallbacks"]),
            "imatrix_kld_reduction": reduction, "retention": figs, "checks": checks,
            "all_pass": all(checks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--eval-tokens", type=int, default=2400)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "quantize.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from slmkit.pipelines import quantize
    from slmkit.pipelines.core.models import resolve

    model_dir = Path(resolve(args.model))
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        tmp = Path(tmp)
        f16 = tmp / "model-f16.gguf"
        # time-to-import counts: a user waits for it too
        child = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, str(model_dir), str(f16)], capture_output=True,
                               text=True, check=True)
        export = json.loads(child.stdout.strip().splitlines()[-1])
        export["checks"] = {"export_seconds": export["seconds"] <= TARGETS["export_s_max"],
                            "export_rss": export["peak_rss_gb"] <= TARGETS["export_rss_gb_max"]}
        scenarios = {"general": (quantize.CALIB_SAMPLE, quantize.HELDOUT_SAMPLE),
                     "domain": _domain_split(tmp)}
        results = {name: _scenario(model_dir, f16, tmp, name, c, h, args) for name, (c, h) in scenarios.items()}

    result = {
        "model": args.model, "machine": {"cpu_threads": args.threads, "platform": platform.platform()},
        "export": export, "scenarios": results, "targets": TARGETS,
        "scenario_notes": {"general": "shipped English samples: evals/calib_sample.txt → evals/heldout_sample.txt",
                           "domain": "demo tickets (recipes/data/tickets_raw.jsonl), seeded 80/20 split by record"},
        "bench_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"export: {export['seconds']:.2f} s, peak RSS {export['peak_rss_gb']:.2f} GB, checks {export['checks']}")
    for name, r in results.items():
        print(f"[{name}] size ratio {r['q4km_size_ratio']:.3f}, imatrix KLD reduction "
              f"{r['imatrix_kld_reduction']:.1%}, all pass: {r['all_pass']} {r['checks']}")
        for label, f in r["retention"].items():
            print(f"  {label:22s} tokens {f['tokens']}  KLD mean {f['kld_mean']:.5f}  p99 {f['kld_p99']:.4f}  "
                  f"top-1 {f['top1_agreement']:.2%}  ppl ratio {f['ppl_ratio']:.4f}")


if __name__ == "__main__":
    main()
