"""Check a recipe without running anything: every problem at once, with its key path and line.

Examples:

  slmkit validate recipes/demo.yaml

  slmkit validate my.yaml finetune.max_steps=0     # overrides are checked too

A recipe that names Python code to import (an lm-eval task YAML with `!function` tags, a module:function field)
is valid, and validate lists that code: `slmkit run` needs --allow-code (or `allow_code: true`) to import it.
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
    from rich.markup import escape

    from slmkit.pipelines.core.code_refs import describe, find_code_refs
    from slmkit.pipelines.core.recipe import find_recipe, load_recipe, stages_in

    rec = load_recipe(recipe, overrides)
    console.print(f"[green]✓[/] {find_recipe(recipe)}: valid — run '{rec.name}', "
                  f"stages: {', '.join(stages_in(rec)) or 'none'}")
    refs = find_code_refs(rec)
    if refs:
        allowed = "allowed by `allow_code: true`" if rec.allow_code else "`slmkit run` needs --allow-code " \
            "(or `allow_code: true` in the recipe) to import it"
        console.print(f"[yellow]![/] imports Python code ({len(refs)} reference(s); {allowed}):\n"
                      f"{escape(describe(refs))}", highlight=False)
