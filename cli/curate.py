"""Select the domain data that teaches the task: dedup, near-dedup, quality, relevance, decontamination.

Examples:

  slmkit curate --input raw.jsonl --eval eval.jsonl --out curated/

  slmkit curate --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "curate"


def command(
    input: list[Path] = typer.Option(None, "--input", "-i", help="raw data file or folder (repeatable)"),
    eval: list[Path] = typer.Option(None, "--eval", help="eval set to decontaminate against (repeatable)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"input": input, "eval": eval})
