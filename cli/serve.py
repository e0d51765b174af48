"""Serve a GGUF model over an OpenAI-compatible HTTP API on 127.0.0.1 (for teachers, tests and benchmarks).

Examples:

  slmkit serve model.gguf --port 18080

  slmkit serve model.gguf --port 18080 --delay-ms 200   # add latency, like a remote teacher

  slmkit serve model.gguf --threads 2

Both /v1/chat/completions and /v1/completions answer `"stream": true` with server-sent events.
"""

from __future__ import annotations

from pathlib import Path

import typer

NAME = "serve"
NO_ARGS_HELP = True


def command(
    model: Path = typer.Argument(..., help="GGUF file to serve"),
    port: int = typer.Option(18080, "--port", "-p", help="port on 127.0.0.1"),
    delay_ms: int = typer.Option(0, "--delay-ms", min=0,
                                 help="extra latency before the first byte of every answer, in milliseconds"),
    n_ctx: int = typer.Option(2048, "--n-ctx", min=1, help="context length"),
    threads: int | None = typer.Option(None, "--threads", min=1, show_default="all cores",
                                       help="CPU threads for the model"),
) -> None:
    from slmkit.pipelines.serve import serve_forever

    serve_forever(model, port, delay_ms, n_ctx, threads)
