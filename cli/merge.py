"""Merge a LoRA adapter into its base model, reloaded in full precision, and check the logits match.

Examples:

  slmkit merge --base smollm2-135m-instruct --adapter adapter/ --out merged/

  slmkit merge --adapter runs/demo/03_finetune/adapter --out merged/   (base read from the adapter)

  slmkit merge --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer
from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "merge"


def command(
    base: str = typer.Option(None, "--base", "-b", help="base model: known name, HF folder, or HF id"),
    adapter: Path = typer.Option(None, "--adapter", "-a", help="PEFT adapter folder"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for the merged HF model"),
    tolerance: float = typer.Option(None, "--tolerance", help="max |logit| difference merged vs base+adapter"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"base": base, "adapter": adapter, "tolerance": tolerance})
