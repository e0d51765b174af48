"""Run a recipe's stages in order, skipping those already done for the same config and inputs.

Examples:

  slmkit run demo

  slmkit run recipes/demo.yaml finetune.max_steps=40

  slmkit run my.yaml --from finetune        # rerun finetune and everything after it

  slmkit run my.yaml --only curate --force curate

  slmkit run demo --until distill           # stop after distill

  slmkit run my.yaml --allow-code           # the recipe names Python code to import (see slmkit validate)
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import OverridesArg, RunsDirOpt, console

NAME = "run"
NO_ARGS_HELP = True


def command(
    recipe: str = typer.Argument(..., help="recipe file, or the name of a shipped recipe (slmkit recipes)"),
    overrides: list[str] = OverridesArg,
    only: list[str] = typer.Option(None, "--only", help="run only this stage (repeatable)"),
    start: str = typer.Option(None, "--from", help="rerun this stage and every stage after it"),
    until: str = typer.Option(None, "--until", help="stop after this stage"),
    force: list[str] = typer.Option(None, "--force", help="rerun this stage even if it is done (repeatable)"),
    runs_dir: Path = RunsDirOpt,
    allow_code: bool = typer.Option(False, "--allow-code", help="let the recipe import the Python code it names "
                                                                "(lm-eval !function tags; listed by validate)"),
) -> None:
    from slmkit.cli.status import print_status
    from slmkit.pipelines.core.code_refs import find_code_refs, require_allowed
    from slmkit.pipelines.core.recipe import find_recipe, load_recipe
    from slmkit.pipelines.core.runner import Run

    rec = load_recipe(recipe, overrides)
    require_allowed(find_code_refs(rec), allow_code or rec.allow_code, recipe)  # before anything runs
    run = Run.open(rec, runs_dir)
    console.print(f"run directory: {run.root}")
    run.execute(only=only, start=start, force=force, recipe_file=str(find_recipe(recipe)),
                overrides=overrides or [], console=console, until=until)
    print_status(run)
