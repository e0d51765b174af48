"""The `slmkit` command: one Typer app, one small module per verb. Verbs parse and print; pipelines/ works."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from slmkit.cli import (
    bench,
    curate,
    distill,
    finetune,
    merge,
    models,
    quantize,
    recipes,
    run,
    serve,
    status,
    validate,
)
from slmkit.cli.common import err_console

from slmkit import __version__

app = typer.Typer(
    name="slmkit",
    help="Build small language models that beat a cloud LLM on your own task — and measure it.\n\n"
    "Examples:\n\n"
    "  slmkit run demo                      # the shipped demo recipe, every stage\n\n"
    "  slmkit run my.yaml finetune.max_steps=50 --from finetune\n\n"
    "  slmkit status demo                   # what is done, stale, pending or failed\n\n"
    "  slmkit models prepare smollm2-135m-instruct",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The pipeline's stage verbs, in pipeline order, then the verbs that drive and inspect runs.
for module in (curate, distill, finetune, merge, quantize, bench, run, status, validate, recipes, serve):
    app.command(name=module.NAME, help=module.__doc__, no_args_is_help=getattr(module, "NO_ARGS_HELP", False))(
        module.command
    )
app.add_typer(models.app, name="models")


def _version(value: bool) -> None:
    if value:
        print(f"slmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    pass


def main() -> None:
    """Entry point: user errors print one clear message and exit non-zero, never a traceback."""
    from slmkit.pipelines.errors import SlmkitError

    try:
        app(standalone_mode=False)
    except SlmkitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]: finished stages are kept; rerun to resume")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Typer vendors its own copy of click, so match usage errors by shape rather than by class.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
