"""What every verb shares: the console, error display, and running a stage from flags or from a recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from slmkit.pipelines.core.errors import RecipeError

console = Console()
err_console = Console(stderr=True)

OverridesArg = typer.Argument(None, help="recipe overrides KEY.PATH=VALUE, e.g. finetune.max_steps=20",
                              show_default=False)
RunsDirOpt = typer.Option(Path("runs"), "--runs-dir", help="folder that holds run directories")
RecipeOpt = typer.Option(None, "--recipe", "-r", help="run this stage from its section of a recipe file "
                                                      "(or a shipped recipe's name)")
SetOpt = typer.Option(None, "--set", "-s", help="recipe override KEY.PATH=VALUE (with --recipe); repeatable")
ForceOpt = typer.Option(False, "--force", help="rerun even if the output is complete for this config")


def build_config(stage: str, values: dict[str, Any]):
    """A stage config from command-line flags; flag values left unset fall back to the config's defaults."""
    from slmkit.pipelines.core.stages import STAGES

    model = STAGES[stage].config
    data = {k: v for k, v in values.items() if v is not None and v != []}
    try:
        return model.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as err:
        from slmkit.pipelines.core.recipe import _problems

        problems = [_as_flag(p) for p in _problems(err, {}, set())]
        raise RecipeError(f"slmkit {stage}", problems) from None


def _as_flag(problem: str) -> str:
    """`max_steps: must be > 0` -> `--max-steps: must be > 0`: name the flag the user typed."""
    key, _, rest = problem.partition(":")
    head, _, tail = key.partition(".")
    return f"--{head.replace('_', '-')}{'.' + tail if tail else ''}:{rest}"


def run_stage_verb(stage: str, *, recipe: str | None, overrides: list[str] | None, runs_dir: Path,
                   flags: dict[str, Any], out: Path | None, force: bool) -> None:
    """`slmkit <stage> …`: from a recipe's section (inside its run directory) or standalone from flags."""
    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.runner import Run, run_standalone

    if recipe:
        from slmkit.pipelines.core.recipe import find_recipe, load_recipe

        # Flags become overrides of the recipe's section; JSON is valid YAML, so lists and paths survive the trip.
        sets = list(overrides or []) + [f"{stage}.{k}={json.dumps(v, default=str)}"
                                        for k, v in flags.items() if v not in (None, [])]
        rec = load_recipe(recipe, sets)
        if getattr(rec, stage) is None:
            raise SlmkitError(f"{recipe}: the recipe has no '{stage}' section")
        run = Run.open(rec, runs_dir)
        run.execute(only=[stage], force=[stage] if force else None, recipe_file=str(find_recipe(recipe)),
                    overrides=sets, console=console)
        console.print(f"outputs: {run.stage_dir(stage)}")
        return
    if out is None:
        raise SlmkitError(f"slmkit {stage}: give --out DIR (or --recipe FILE)")
    config = build_config(stage, flags)
    result = run_standalone(stage, config, out, force=force, console=console)
    console.print(f"outputs: {result.dir}")
