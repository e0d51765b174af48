"""The `slmkit` command: one Typer app, one small module per verb. Verbs parse and print; pipelines/ works."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from slmkit import __version__
from slmkit.cli import (
    agent,
    bench,
    curate,
    distill,
    finetune,
    merge,
    models,
    quantize,
    recipes,
    route,
    run,
    serve,
    status,
    validate,
)
from slmkit.cli.common import err_console

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
for module in (curate, distill, finetune, merge, quantize, bench, route, agent, run, status, validate, recipes, serve):
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


INTERRUPTED = "interrupted{how}: finished stages are kept, the stopped one is marked FAILED; rerun to resume"
_signal_name: list[str] = []


def _terminate(signum: int, _frame) -> None:
    """SIGTERM (kill, a CI timeout, systemd) ends a verb the way Ctrl-C does: KeyboardInterrupt in the main thread,
    so the stage records FAILED and the exit code is 130."""
    import signal

    _signal_name.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def _interrupted() -> None:
    import signal

    # From here on a second Ctrl-C or SIGTERM ends the process at once (no traceback from threads still joining).
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # not the main thread
            pass
    how = f" ({_signal_name[0]})" if _signal_name else ""
    err_console.print(f"[red]{INTERRUPTED.format(how=how)}[/]", highlight=False)
    sys.exit(130)


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def _os_error(exc: OSError) -> str | None:
    """A message for an OSError the user can act on (a full disk, a read-only or forbidden path), else None: other
    OSErrors are bugs and keep their traceback."""
    from slmkit.pipelines.core.rundir import write_error

    if exc.errno not in _DISK_ERRORS:
        return None
    if exc.filename is None:  # a write to an open file: the path is not known here
        full = "; the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"a write failed ({os.strerror(exc.errno)}){full}"
    return str(write_error(Path(os.fsdecode(exc.filename)), exc, what="failed"))


def main() -> None:
    """Entry point: user errors print one clear message and exit non-zero, never a traceback. An interrupted verb
    (Ctrl-C or SIGTERM) says so and exits 130, so that `slmkit run x && next` stops."""
    import signal

    from slmkit.pipelines.core.errors import SlmkitError

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a thread): leave SIGTERM as it is
        pass
    try:
        # Typer turns a KeyboardInterrupt inside a command into a *returned* 130 in non-standalone mode.
        rc = app(standalone_mode=False)
        if rc == 130:
            _interrupted()
        sys.exit(rc if isinstance(rc, int) else 0)
    except SlmkitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        if exc.exit_code == 130:
            _interrupted()
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        _interrupted()
    except UnicodeDecodeError as exc:  # a reader that did not name its file: still no traceback
        err_console.print(f"[bold red]error:[/] a file is not UTF-8 text ({escape(exc.reason)} at byte {exc.start})",
                          highlight=False)
        sys.exit(1)
    except OSError as exc:
        msg = _os_error(exc)
        if msg is None:
            raise
        err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        # Typer vendors its own copy of click, so match usage errors by shape rather than by class.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
