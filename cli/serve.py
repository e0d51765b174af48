"""Serve a GGUF model over an OpenAI-compatible HTTP API on 127.0.0.1 (for teachers, tests and benchmarks).

Examples:

  slmkit serve model.gguf --port 18080

  slmkit serve model.gguf --port 18080 --delay-ms 200   # add latency, like a remote teacher
"""

from __future__ import annotations

from pathlib import Path

import typer

NAME = "serve"
NO_ARGS_HELP = True


def command(
    model: Path = typer.Argument(..., help="GGUF file to serve"),
    port: int = typer.Option(18080, "--port", "-p", help="port on 127.0.0.1"),
    delay_ms: int = typer.Option(0, "--delay-ms", help="extra latency per request, in milliseconds"),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="context length"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for the model"),
) -> None:
    from slmkit.pipelines.serve import serve_forever

    serve_forever(model, port, delay_ms, n_ctx, threads)
