"""A teacher LLM writes the training data (and, where tokenizers match, its token probabilities).

Examples:

  slmkit distill --teacher openai:gpt-4o-mini@https://api.openai.com/v1 --prompts prompts.jsonl --out data/

  slmkit distill --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "distill"


def command(
    teacher: str = typer.Option(None, "--teacher", "-t", help="openai:MODEL@BASE_URL, hf:PATH or gguf:PATH"),
    prompts: Path = typer.Option(None, "--prompts", "-p", help="JSONL with prompt/messages, or text, one per line"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"teacher": teacher, "prompts": prompts})
