"""Benchmark of 4-bit mixtures for models whose rows K-quants cannot take; writes bench-results/quant_mixture.json.

  python scripts/bench_quant_mixture.py [--model DIR] [--threads 2] [--eval-tokens 2048]
      [--calib TEXT] [--calib-tokens N] [--general-tokens N] [--damp D] [--only LABEL ...]

One F16 export of the model (default: the shipped SmolLM2-135M-Instruct; pass the demo's merged model,
runs/demo/04_merge/model, to measure the demo's own file, or a known name such as gemma3-270m), one pass over
the shipped calibration text for the matrices' input second moments (their diagonal is the importance matrix),
then each variant quantised by llama.cpp's own quantiser and compared with the F16 on two held-out texts (the
shipped English sample and the demo's evaluation tickets): file size against F16, bits per weight, mean / p99
KLD and top-1 agreement. Variants: llama.cpp's Q4_K_M (rows of 576 → Q5_0, embedding → Q8_0), slmkit's
Q4_K_NL and Q4_K_NL30 as llama.cpp rounds them and with their blocks rounded by GPTQ (pipelines/quantize/gptq.py;
Q4_K_NL30 + GPTQ is the chosen file), and the mixtures they were chosen against, as per-tensor type rules (among
them 4- and 5-bit attention keys and values with GPTQ, each head's rows rounded against its attention-weighted
moments).

The calibration text decides which text a file keeps best: `--calib` takes another text (the demo's own
calibrates on curate's train, runs/demo/01_curate/train.jsonl) and `--general-tokens N` adds N tokens of the
shipped general sample to it, as `quantize.calib_general_tokens` does.

Speed (TTFT, decode) of the chosen file is bench's business (the demo's table); this script measures size
and fidelity only, which do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = {"size_ratio_max": 0.30, "bits_per_weight_max": 4.9, "kld_mean_max": 0.05}
TICKETS = ROOT / "recipes" / "data" / "tickets_eval.jsonl"


def _rule(kv: str | None, fit256: str, fit32: str, embd: str | None = None, k: str | None = None):
    """A per-tensor rule: k/v matrices (k apart if given), rows that fit 256-wide super-blocks, rows that fit
    only 32, embedding."""
    def rule(name: str, row: int) -> str | None:
        from slmkit.pipelines.quantize.gguf_quant import KV_MATRIX

        if not name.endswith(".weight") or "norm" in name:
            return None
        if embd and name == "token_embd.weight":
            return embd
        if k and name.endswith("attn_k.weight"):
            return k
        if kv and KV_MATRIX.search(name):
            return kv
        return fit256 if row % 256 == 0 else fit32 if row % 32 == 0 else None
    return rule


CHOSEN = "Q4_K_NL30 + GPTQ (slmkit)"
# name → (what it is, rule, GPTQ); the mixtures slmkit's Q4_K_NL and Q4_K_NL30 were chosen against.
ALTERNATIVES = {
    "all_IQ4_NL_embd_Q5_0": ("every row IQ4_NL or Q4_K, embedding Q5_0", _rule(None, "Q4_K", "IQ4_NL", "Q5_0"), False),
    "all_Q4_0_embd_Q5_0": ("Q4_0 instead of IQ4_NL, embedding Q5_0", _rule(None, "Q4_K", "Q4_0", "Q5_0"), False),
    "all_IQ4_NL_embd_Q8_0": ("every row IQ4_NL or Q4_K, embedding Q8_0", _rule(None, "Q4_K", "IQ4_NL", "Q8_0"),
                             False),
    "all_IQ4_NL": ("every row IQ4_NL or Q4_K, embedding too", _rule(None, "Q4_K", "IQ4_NL"), False),
    "embd_Q5_0_gptq": ("Q4_K_NL with a 5-bit (Q5_0) embedding, all 32-wide blocks by GPTQ",
                       _rule("Q8_0", "Q4_K", "IQ4_NL", "Q5_0"), True),
    "all_4bit_embd_Q5_0_gptq": ("every row 4-bit (k and v too), embedding Q5_0, all blocks by GPTQ",
                                _rule(None, "Q4_K", "IQ4_NL", "Q5_0"), True),
    "kv_Q5_0_embd_Q5_0_gptq": ("k and v Q5_0, embedding Q5_0, the rest 4-bit, all blocks by GPTQ",
                               _rule("Q5_0", "Q4_K", "IQ4_NL", "Q5_0"), True),
    "k_4bit_v_Q5_0_embd_Q5_0_gptq": ("k IQ4_NL, v Q5_0, embedding Q5_0, the rest 4-bit, all blocks by GPTQ",
                                     _rule("Q5_0", "Q4_K", "IQ4_NL", "Q5_0", k="IQ4_NL"), True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF folder or known model name (default: the shipped SmolLM2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--calib", type=Path, default=None, help="calibration text (default: the shipped general sample)")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--general-tokens", type=int, default=0, help="tokens of the shipped general sample added")
    ap.add_argument("--damp", type=float, default=None, help="GPTQ's damping (default: gptq.DAMP)")
    ap.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                    help="measure only these variants (labels as printed; the chosen one is always measured)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "quant_mixture.json")
    args = ap.parse_args(argv)

    from slmkit.pipelines.core.models import resolve
    from slmkit.pipelines.quantize import (
        CALIB_SAMPLE,
        HELDOUT_SAMPLE,
        calibration_chunks,
        gguf_export,
        gguf_quant,
        gptq,
        read_text,
        retention,
    )

    model_dir = Path(resolve(args.model or "smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        f16 = gguf_export.export(model_dir, tmp / "model-f16.gguf", "f16").path
        f16_bytes = f16.stat().st_size
        if args.damp is not None:
            gptq.DAMP = args.damp  # read by gptq.quantize_matrix at each call
        calib_text = args.calib or CALIB_SAMPLE
        calib, n_own = calibration_chunks(model_dir, calib_text, args.calib_tokens, args.general_tokens)
        moments = gptq.second_moments(model_dir, calib)  # its diagonal is the importance matrix: one pass
        imatrix = gptq.importance(moments)
        texts = {"heldout_sample": read_text(HELDOUT_SAMPLE), "demo_tickets": read_text(TICKETS)}
        chunks = {k: retention.token_chunks(model_dir, v, args.eval_tokens, 512) for k, v in texts.items()}

        # label → (qtype, rounded with GPTQ's error compensation)
        variants = {"Q4_K_M (llama.cpp)": ("Q4_K_M", False), "Q4_K_NL (slmkit)": ("Q4_K_NL", False),
                    "Q4_K_NL + GPTQ (slmkit)": ("Q4_K_NL", True), "Q4_K_NL30 (slmkit)": ("Q4_K_NL30", False),
                    CHOSEN: ("Q4_K_NL30", True)}
        for name, (_, rule, with_gptq) in ALTERNATIVES.items():
            gguf_quant.QTYPES[name] = gguf_quant.QType(15, 32, rule)  # this script's own, never a recipe's
            variants[name] = (name, with_gptq)
        if args.only:
            unknown = sorted(set(args.only) - set(variants))
            if unknown:
                ap.error(f"--only: unknown variant {', '.join(unknown)} (choose from {', '.join(variants)})")
            variants = {k: v for k, v in variants.items() if k in args.only or k == CHOSEN}
        rows = {}
        for label, (qtype, with_gptq) in variants.items():
            t0 = time.perf_counter()
            path = tmp / f"{qtype}{'-gptq' if with_gptq else ''}.gguf"
            info = gguf_quant.quantize(f16, path, qtype, imatrix, args.threads, moments if with_gptq else None)
            row = {"qtype": qtype, "gptq": with_gptq, "bytes": info["bytes"],
                   "size_ratio": round(info["bytes"] / f16_bytes, 4),
                   "bits_per_weight": info["bits_per_weight"], "tensor_types": info["tensor_types"],
                   "quantise_s": round(time.perf_counter() - t0, 1)}
            for text, ch in chunks.items():
                n_ctx = max(len(c) for c in ch)
                scorers = {"f16": retention.GGUFScorer(f16, n_ctx, args.threads),
                           "q": retention.GGUFScorer(path, n_ctx, args.threads)}
                try:
                    fig = retention.compare(ch, scorers, {"q": ("f16", "q")})["q"]
                finally:
                    for s in scorers.values():
                        s.close()
                row[text] = {k: round(fig[k], 5) for k in ("tokens", "kld_mean", "kld_p99", "top1_agreement",
                                                            "ppl_ratio")}
            rows[label] = row
            print(f"{label:36s} {row['size_ratio']:.3f}x F16  {row['bits_per_weight']:.2f} bpw  "
                  + "  ".join(f"{t}: KLD {row[t]['kld_mean']:.4f} top-1 {row[t]['top1_agreement']:.3f}"
                              for t in chunks), flush=True)

    chosen = rows[CHOSEN]
    met = {"size_ratio": chosen["size_ratio"] <= GOAL["size_ratio_max"],
           "bits_per_weight": chosen["bits_per_weight"] <= GOAL["bits_per_weight_max"],
           "kld_mean": all(chosen[t]["kld_mean"] <= GOAL["kld_mean_max"] for t in chunks)}
    result = {"model": str(model_dir), "f16_bytes": f16_bytes, "chosen": CHOSEN, "imatrix_tokens": sum(len(c) for c in calib),
              "damp": gptq.DAMP, "calib": {"text": str(calib_text), "tokens": sum(len(c) for c in calib[:n_own]),
                        "general_tokens": sum(len(c) for c in calib[n_own:])},
              "texts": {k: str(v) for k, v in {"heldout_sample": HELDOUT_SAMPLE, "demo_tickets": TICKETS}.items()},
              "variants": rows, "alternatives": {k: v[0] for k, v in ALTERNATIVES.items()},
              "goal": GOAL, "goal_met": met,
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"goal (≤{GOAL['size_ratio_max']}x, ≤{GOAL['bits_per_weight_max']} bpw, KLD ≤{GOAL['kld_mean_max']}): "
          f"{met}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
