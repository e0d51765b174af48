"""Fine-tune a base model on the domain data with LoRA or QLoRA; resumes from its last checkpoint.

Examples:

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --max-steps 100

  slmkit finetune --recipe demo --set finetune.learning_rate=1e-4
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "finetune"


def command(
    model: str = typer.Option(None, "--model", "-m", help="base model: known name, HF folder, or HF id"),
    data: Path = typer.Option(None, "--data", "-d", help="training JSONL (chat messages or prompt/response)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for the adapter"),
    method: str = typer.Option(None, "--method", help="lora or qlora"),
    max_steps: int = typer.Option(None, "--max-steps", help="optimizer steps"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"model": model, "data": data, "method": method, "max_steps": max_steps})
