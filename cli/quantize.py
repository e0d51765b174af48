"""Export an HF model to GGUF and quantise it (Q4_K_M by default), measuring the quality kept.

Writes model-f16.gguf (or f32/bf16), one model-<QTYPE>.gguf per --qtype, imatrix.npz, an Ollama Modelfile for
the first qtype, and quantize.json (KL divergence, top-1 agreement and perplexity of each file against its
reference on held-out text).

Examples:

  slmkit quantize --model merged/ --out gguf/ --qtype Q4_K_M --qtype Q8_0

  slmkit quantize --model merged/ --out gguf/ --calib data/train.jsonl --heldout data/eval.jsonl

  slmkit quantize --model merged/ --out gguf/ --no-imatrix --max-kld 0.1

  # at most 0.30x of F16 where rows are not a multiple of 256; GPTQ calibrated on the domain and general text
  slmkit quantize --model merged/ --out gguf/ --qtype Q4_K_NL30 --gptq --calib data/train.jsonl --calib-tokens 1024 --calib-general-tokens 4096

  slmkit quantize --recipe demo
"""

from __future__ import annotations

from slmkit.cli.config_flags import Flag, stage_command

NAME = "quantize"

# What the verb adds to the flags made from QuantizeConfig (one per field, e.g. --no-imatrix for `imatrix`).
FLAGS = {
    "model": Flag("-m"),
    "base": Flag("-b"),
    "qtypes": Flag("--qtype", "-q"),
    "min_top1_agreement": Flag("--min-top1"),
    "outtype": Flag(help="unquantised GGUF type"),
    "threads": Flag(help="CPU threads for torch and llama.cpp"),
}

command = stage_command(NAME, FLAGS, out_help="output folder for the GGUF files", doc=__doc__)
