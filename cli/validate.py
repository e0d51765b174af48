"""Check a recipe without running anything: every problem at once, with its key path and line.

Examples:

  slmkit validate recipes/demo.yaml

  slmkit validate my.yaml finetune.max_steps=0     # overrides are checked too
"""

from __future__ import annotations

import typer
from slmkit.cli.common import OverridesArg, console

NAME = "validate"
NO_ARGS_HELP = True


def command(
    recipe: str = typer.Argument(..., help="recipe file, or the name of a shipped recipe"),
    overrides: list[str] = OverridesArg,
) -> None:
    from slmkit.pipelines.recipe import find_recipe, load_recipe, stages_in

    rec = load_recipe(recipe, overrides)
    console.print(f"[green]✓[/] {find_recipe(recipe)}: valid — run '{rec.name}', "
                  f"stages: {', '.join(stages_in(rec)) or 'none'}")
