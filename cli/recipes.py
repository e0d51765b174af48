"""List the recipes that ship with slmkit, or print one to copy and edit.

Examples:

  slmkit recipes

  slmkit recipes demo > my.yaml
"""

from __future__ import annotations

import typer
from rich.table import Table
from slmkit.cli.common import console

NAME = "recipes"


def command(name: str = typer.Argument(None, help="print this shipped recipe")) -> None:
    import yaml
    from slmkit.pipelines.errors import SlmkitError
    from slmkit.pipelines.recipe import shipped

    known = shipped()
    if name:
        if name not in known:
            raise SlmkitError(f"no shipped recipe '{name}' (shipped: {', '.join(sorted(known))})")
        print(known[name].read_text(), end="")
        return
    table = Table(title="shipped recipes (slmkit recipes NAME prints one)")
    for col in ("name", "stages", "description"):
        table.add_column(col)
    for key, path in sorted(known.items()):
        data = yaml.safe_load(path.read_text()) or {}
        stages = [s for s in ("curate", "distill", "finetune", "merge", "quantize", "bench") if s in data]
        table.add_row(key, " → ".join(stages), str(data.get("description", "")).strip().split("\n")[0])
    console.print(table)
