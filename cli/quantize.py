"""Export an HF model to GGUF and quantise it (Q4_K_M by default), measuring the quality kept.

Examples:

  slmkit quantize --model merged/ --out gguf/ --qtype Q4_K_M --qtype Q8_0

  slmkit quantize --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "quantize"


def command(
    model: Path = typer.Option(None, "--model", "-m", help="HF model folder"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for the GGUF files"),
    qtype: list[str] = typer.Option(None, "--qtype", "-q", help="quantisation type (repeatable)"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"model": model, "qtypes": qtype})
