"""Fine-tune a base model on the domain data with LoRA or QLoRA; resumes from its last checkpoint.

Examples:

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --max-steps 100

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --method qlora --save-every 10

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --processes 2

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --memory-budget 2.5GB

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --set finetune.lora.alpha=64

  slmkit finetune --recipe demo --set finetune.learning_rate=1e-4

  slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out /shared/ft --machines 2 \
      --main-address node0 --print-launch
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import Flags, build_config, console, run_stage_verb
from slmkit.cli.config_flags import Flag, stage_options

NAME = "finetune"

# What the verb adds to the flags made from FinetuneConfig (one per field, e.g. --max-steps, --no-packing).
FLAGS = {
    "model": Flag("-m"),
    "data": Flag("-d"),
    "method": Flag(help="lora, or qlora (bitsandbytes NF4, double quant)"),
    "learning_rate": Flag("--lr", help="peak learning rate"),
    "lora.r": Flag("--lora-r"),
    "grad_accum": Flag(help="gradient accumulation steps"),
}



@stage_options(NAME, FLAGS, out_help="output folder for the adapter")
def command(
    flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None, runs_dir: Path, force: bool,
    print_launch: bool = typer.Option(False, "--print-launch", help="print the worker command of every machine "
                                                                    "(one a line, machine 0 first) and exit"),
) -> None:
    if print_launch:
        _print_launch(flags, out, sets, recipe)
        return
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)


command.__doc__ = __doc__


def _print_launch(flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None) -> None:
    """Write the workers' config under OUT/.state and print each machine's command, for srun or ssh."""
    import shlex

    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.finetune import launch

    if recipe or out is None:
        raise SlmkitError("slmkit finetune --print-launch: give --out DIR (on a filesystem every machine sees) "
                          "and the config as flags; --recipe is not supported with it")
    config = build_config(NAME, flags, sets)
    if config.data is None or config.model is None:
        raise SlmkitError("slmkit finetune --print-launch: give --model and --data")
    out = out.resolve()
    state = out / ".state"
    state.mkdir(parents=True, exist_ok=True)
    dump = config.model_dump(mode="json")
    seed = config.seed if config.seed is not None else 0
    spec = launch.write_spec(dump, state)
    for rank in range(config.machines):
        console.print(shlex.join(launch.launch_command(dump, rank, spec, out, state, seed)), soft_wrap=True,
                      markup=False, highlight=False)
