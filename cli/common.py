"""What every verb shares: the console, error display, and running a stage from flags or from a recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
ForceOpt = typer.Option(False, "--force", help="rerun even if the output is complete for this config")


@dataclass(frozen=True)
class Flags:
    """The config keys one invocation's flags gave, and the flag of every config key that has one."""

    values: dict[str, Any]  # config key path (dotted for a nested key) -> value, only those given
    names: dict[str, str] = field(default_factory=dict)  # config key path -> its flag, e.g. qtypes -> --qtype


def recipe_overrides(stage: str, sets: list[str] | None, flags: Flags) -> list[str]:
    """--set and the flags as overrides of a recipe's section, flags last (they win); JSON is valid YAML, so
    lists, mappings and paths survive the trip."""
    return list(sets or []) + [f"{stage}.{k}={json.dumps(v, default=str)}" for k, v in flags.values.items()]


def build_config(stage: str, flags: Flags, sets: list[str] | None = None):
    """A stage config from command-line flags and --set keys (no recipe); keys left unset keep the config's
    defaults. A flag wins over a --set of the same key, as with --recipe."""
    from slmkit.pipelines.core.recipe import _problems, apply_overrides, parse_override
    from slmkit.pipelines.core.stages import STAGES

    sets = list(sets or [])
    for text in sets:
        if parse_override(text)[0][0] != stage:
            raise RecipeError(f"slmkit {stage}", [f"--set {text}: without --recipe, a key is one of {stage}'s: "
                                                   f"{stage}.KEY.PATH=VALUE"])
    data = apply_overrides({stage: {}}, sets)[stage]
    if not isinstance(data, dict):
        raise RecipeError(f"slmkit {stage}", [f"--set {stage}=…: the section is a mapping; set its keys"])
    for path, value in flags.values.items():
        *heads, last = path.split(".")
        node = data
        for head in heads:
            if not isinstance(node.get(head), dict):
                node[head] = {}
            node = node[head]
        node[last] = value
    try:
        return STAGES[stage].config.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as err:
        set_keys = {".".join(map(str, parse_override(t)[0][1:])) for t in sets}
        problems = [_as_flag(p, stage, flags, set_keys) for p in _problems(err, {}, set())]
        raise RecipeError(f"slmkit {stage}", problems) from None


def _as_flag(problem: str, stage: str, flags: Flags, set_keys: set[str]) -> str:
    """`min_top1_agreement: must be <= 1` -> `--min-top1: must be <= 1`: name what the user typed, the flag or
    the --set key, else the flag that would set the key, else the key."""
    key, sep, rest = problem.partition(":")
    if not sep or key == "(top level)":
        return problem
    parts = key.split(".")
    prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]

    def flag(prefix: str) -> str:
        name = flags.names[prefix]
        return f"{name}:{rest}" if prefix == key else f"{name} ({key}):{rest}"

    for prefix in prefixes:
        if prefix in flags.values:
            return flag(prefix)
        if prefix in set_keys:
            return f"--set {stage}.{key}:{rest}"
    for prefix in prefixes:
        if prefix in flags.names:
            return flag(prefix)
    return f"{stage}.{key}:{rest}"


def run_stage_verb(stage: str, *, recipe: str | None, overrides: list[str] | None, runs_dir: Path,
                   flags: Flags, out: Path | None, force: bool) -> None:
    """`slmkit <stage> …`: from a recipe's section (inside its run directory) or standalone from flags."""
    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.runner import Run, run_standalone

    if recipe:
        from slmkit.pipelines.core.recipe import find_recipe, load_recipe

        sets = recipe_overrides(stage, overrides, flags)
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
    config = build_config(stage, flags, overrides)
    result = run_standalone(stage, config, out, force=force, console=console)
    console.print(f"outputs: {result.dir}")


def reported_figures_verb(stage: str, checker: Any, *, check: Path | None, results: Path | None,
                          write_reported: Path | None) -> bool:
    """`slmkit <stage> --check/--write-reported … --results FILE`: compare a finished run's results with the
    reported figures, or write them from it. `checker` is the stage's check module (its `run_check` and
    `write_reported`). True when the verb was one of these (and so is done), False for a run."""
    from slmkit.pipelines.core.errors import SlmkitError

    what = f"{stage.upper()}_JSON"
    if write_reported or check:
        if not results:
            raise SlmkitError(f"slmkit {stage}: --check and --write-reported need --results {what}")
        if write_reported:
            checker.write_reported(results, write_reported, console)
        else:
            checker.run_check(check, results, console)
        return True
    if results:
        raise SlmkitError(f"slmkit {stage}: --results goes with --check or --write-reported")
    return False
