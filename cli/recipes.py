"""List the recipes that ship with slmkit, or copy one (with the data files it reads) to edit.

Examples:

  slmkit recipes

  slmkit recipes demo --to my-task            # my-task/demo.yaml and my-task/data/…, ready to validate and run

  slmkit recipes demo --to my-task --name tickets   # my-task/tickets.yaml, run name 'tickets'

  slmkit recipes demo > my.yaml               # the YAML alone; its data stays in the package (see its last lines)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from slmkit.cli.common import console

NAME = "recipes"


def command(
    name: str = typer.Argument(None, help="print this shipped recipe (or copy it, with --to)"),
    to: Path = typer.Option(None, "--to", help="copy the recipe and the data files it reads into this folder"),
    new_name: str = typer.Option(None, "--name", help="with --to: the new recipe's file and run name"),
    force: bool = typer.Option(False, "--force", help="with --to: overwrite files that are already there"),
) -> None:
    import yaml

    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.recipe import shipped

    known = shipped()
    if name:
        if name not in known:
            raise SlmkitError(f"no shipped recipe '{name}' (shipped: {', '.join(sorted(known))})")
        if to is not None:
            _copy(known[name], to, new_name, force)
            return
        if new_name or force:
            raise SlmkitError("--name and --force go with --to DIR")
        print(_with_data_note(known[name], name), end="")
        return
    if to is not None or new_name or force:
        raise SlmkitError("--to, --name and --force need a recipe name: slmkit recipes NAME --to DIR")
    table = Table(title="shipped recipes (slmkit recipes NAME --to DIR copies one with its data)")
    for col in ("name", "stages", "description"):
        table.add_column(col)
    for key, path in sorted(known.items()):
        data = yaml.safe_load(path.read_text()) or {}
        stages = [s for s in ("curate", "distill", "finetune", "merge", "quantize", "bench") if s in data]
        table.add_row(key, " → ".join(stages), str(data.get("description", "")).strip().split("\n")[0])
    console.print(table)


def data_files(recipe: Path) -> list[str]:
    """The paths a recipe names relative to its own folder that exist there (files or folders), in order.

    Found by value, not by schema: every string in the YAML that names something inside the recipe's folder. So
    a copy works whatever keys a recipe uses, and nothing in the recipe's text needs rewriting. A YAML file it
    names (an agent workflow) is read the same way, its paths relative to its own folder: the workflow's tasks
    file travels with it."""
    import yaml

    base = recipe.parent.resolve()
    found: dict[str, None] = {}

    def walk(value, here: Path) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v, here)
        elif isinstance(value, list):
            for v in value:
                walk(v, here)
        elif isinstance(value, str) and value.strip() and "\n" not in value and len(value) < 1000:
            rel = Path(value)
            if rel.is_absolute() or ".." in rel.parts:
                return
            try:
                target = (here / rel).resolve()
                exists = target.exists()
            except OSError:  # a sentence, not a path (a name longer than the file system allows)
                return
            if target == base or not target.is_relative_to(base) or not exists or target == recipe.resolve():
                return
            key = target.relative_to(base).as_posix()
            if key in found:
                return
            found[key] = None
            if target.is_file() and target.suffix in (".yaml", ".yml"):
                try:
                    walk(yaml.safe_load(target.read_text(encoding="utf-8")), target.parent)
                except (yaml.YAMLError, UnicodeDecodeError):
                    pass  # not a YAML slmkit reads; copied as it is

    walk(yaml.safe_load(recipe.read_text()) or {}, base)
    return list(found)


def _with_data_note(recipe: Path, name: str) -> str:
    text = recipe.read_text()
    files = data_files(recipe)
    if not files:
        return text
    return (text.rstrip("\n") + "\n\n"
            f"# This recipe reads {', '.join(files)} relative to its own folder, {recipe.parent}.\n"
            f"# Saved elsewhere, copy those files beside it, or let slmkit copy recipe and data together:\n"
            f"#   slmkit recipes {name} --to DIR\n")


def _copy(recipe: Path, dest: Path, new_name: str | None, force: bool) -> None:
    from slmkit.pipelines.core.errors import SlmkitError

    text = recipe.read_text()
    stem = recipe.stem
    if new_name:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", new_name):
            raise SlmkitError(f"--name {new_name}: a run name is letters, digits, '.', '_' and '-'")
        text, n = re.subn(r"^name:[^\n#]*", f"name: {new_name}", text, count=1, flags=re.MULTILINE)
        if n == 0:
            raise SlmkitError(f"{recipe}: no top-level 'name:' line to rename")
        stem = new_name
    files = data_files(recipe)
    target = dest / f"{stem}.yaml"
    # Never overwrite the user's edits unasked; a data file identical to the shipped one is fine as it is.
    clash = [target] if target.exists() else []
    clash += [dest / f for f in files if (dest / f).is_file() and not _same(recipe.parent / f, dest / f)]
    if clash and not force:
        raise SlmkitError(f"{', '.join(map(str, clash))}: already there (--force overwrites)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for rel in files:
            src, dst = recipe.parent / rel, dest / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, dst)
        from slmkit.pipelines.core.rundir import write_text

        write_text(target, text)
    except OSError as err:
        from slmkit.pipelines.core.rundir import write_error

        raise write_error(Path(err.filename or dest), err) from None
    console.print(f"[green]✓[/] wrote {escape(str(target))}" + (f" and {len(files)} data file(s): "
                                                                 f"{escape(', '.join(files))}" if files else ""))
    console.print(f"next:  slmkit validate {escape(str(target))}\n       slmkit run {escape(str(target))}",
                  highlight=False)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False
