"""Export an HF model to GGUF and quantise it (Q4_K_M by default), measuring the quality kept.

Writes model-f16.gguf (or f32/bf16), one model-<QTYPE>.gguf per --qtype, imatrix.npz, an Ollama Modelfile for
the first qtype, and quantize.json (KL divergence, top-1 agreement and perplexity of each file against its
reference on held-out text).

Examples:

  slmkit quantize --model merged/ --out gguf/ --qtype Q4_K_M --qtype Q8_0

  slmkit quantize --model merged/ --out gguf/ --calib data/train.jsonl --heldout data/eval.jsonl

  slmkit quantize --model merged/ --out gguf/ --no-imatrix --max-kld 0.1

  slmkit quantize --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer
from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "quantize"


def command(
    model: Path = typer.Option(None, "--model", "-m", help="HF model folder"),
    base: str = typer.Option(None, "--base", "-b", help="a known model name instead of a folder"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for the GGUF files"),
    qtype: list[str] = typer.Option(None, "--qtype", "-q",
                                    help="Q4_K_M (default), Q4_0, Q5_K_M, Q6_K, Q8_0; repeatable"),
    outtype: str = typer.Option(None, "--outtype", help="unquantised GGUF type: f16 (default), f32, bf16"),
    calib: Path = typer.Option(None, "--calib", help="calibration text for the importance matrix (.txt/.jsonl)"),
    heldout: Path = typer.Option(None, "--heldout", help="held-out text for the retention report (.txt/.jsonl)"),
    no_imatrix: bool = typer.Option(False, "--no-imatrix", help="quantise without an importance matrix"),
    no_retention: bool = typer.Option(False, "--no-retention", help="skip the KL divergence / top-1 report"),
    no_modelfile: bool = typer.Option(False, "--no-modelfile", help="do not write an Ollama Modelfile"),
    eval_tokens: int = typer.Option(None, "--eval-tokens", help="held-out tokens to score (default 2048)"),
    min_top1: float = typer.Option(None, "--min-top1", help="fail if a quantised file's top-1 agreement is lower"),
    max_kld: float = typer.Option(None, "--max-kld", help="fail if a quantised file's mean KLD is higher"),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch and llama.cpp"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    flags = {"model": model, "base": base, "qtypes": qtype, "outtype": outtype, "calib": calib, "heldout": heldout,
             "eval_tokens": eval_tokens, "min_top1_agreement": min_top1, "max_kld": max_kld, "threads": threads,
             "imatrix": False if no_imatrix else None, "retention": False if no_retention else None,
             "modelfile": False if no_modelfile else None}
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
