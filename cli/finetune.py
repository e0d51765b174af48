"""Fine-tune a base model on the domain data with LoRA or QLoRA; resumes from its last checkpoint.

Examples:

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --max-steps 100

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --method qlora --save-every 10

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --processes 2

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
    method: str = typer.Option(None, "--method", help="lora or qlora (bitsandbytes NF4, double quant)"),
    max_steps: int = typer.Option(None, "--max-steps", help="optimizer steps"),
    save_every: int = typer.Option(None, "--save-every", help="checkpoint (and eval) every N steps"),
    eval_data: Path = typer.Option(None, "--eval-data", help="eval JSONL (default: a held-out split)"),
    learning_rate: float = typer.Option(None, "--lr", help="peak learning rate"),
    batch_size: int = typer.Option(None, "--batch-size", help="rows per step"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="gradient accumulation steps"),
    max_length: int = typer.Option(None, "--max-length", help="max tokens per example and packed row"),
    lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank"),
    chat_template: str = typer.Option(None, "--chat-template",
                                      help="for a base without one: 'chatml' or a Jinja template string"),
    seed: int = typer.Option(None, "--seed", help="random seed"),
    processes: int = typer.Option(None, "--processes", help="data-parallel processes (accelerate launch, DDP)"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    flags = {"model": model, "data": data, "method": method, "max_steps": max_steps, "save_every": save_every,
             "eval_data": eval_data, "learning_rate": learning_rate, "batch_size": batch_size,
             "grad_accum": grad_accum, "max_length": max_length, "chat_template": chat_template, "seed": seed,
             "processes": processes}
    if lora_r is not None:
        flags["lora.r" if recipe else "lora"] = lora_r if recipe else {"r": lora_r}
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
