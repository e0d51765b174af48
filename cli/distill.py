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
    mode: str = typer.Option(None, "--mode", "-m", help="generate (answers) or logits (answers + teacher top-k)"),
    system: str = typer.Option(None, "--system", help="system prompt for the teacher"),
    n: int = typer.Option(None, "--n", help="answers per prompt"),
    temperature: float = typer.Option(None, "--temperature", help="teacher sampling temperature"),
    max_tokens: int = typer.Option(None, "--max-tokens", help="most tokens per answer"),
    limit: int = typer.Option(None, "--limit", help="use only the first N prompts"),
    student: str = typer.Option(None, "--student", help="logits mode: the student model (tokenizer check)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"teacher": teacher, "prompts": prompts, "mode": mode, "system": system, "n": n,
                          "temperature": temperature, "max_tokens": max_tokens, "limit": limit,
                          "student": student})
