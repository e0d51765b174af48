"""Serve a GGUF model over an OpenAI-compatible HTTP API (for teachers, tests, benchmarks and apps).

Examples:

  slmkit serve model.gguf --port 18080

  slmkit serve model.gguf --port 18080 --delay-ms 200   # add latency, like a remote teacher

  slmkit serve model.gguf --host 0.0.0.0 --api-key-env SLMKIT_SERVE_KEY   # reachable by others: require a key

  slmkit serve model.gguf --parallel 4   # 4 slots (llama.cpp contexts): 4 requests at once, threads split

  slmkit serve model.gguf --prompt-cache   # faster first token for prompts that share a prefix; see below

  slmkit serve --router runs/demo/07_route/router.json   # one endpoint in front of the SLM and the remote LLM

  slmkit serve --router router.json --remote-url https://api.example.com/v1   # the remote at another address

Both /v1/chat/completions and /v1/completions answer `"stream": true` with server-sent events. The same request
gets the same answer whatever came before it: by default a prompt reuses the previous one's KV cache only in
whole prefill batches of their common prefix (512 tokens each), which evaluates every batch exactly as a
prefill from scratch would, so a few-shot or system prefix longer than a batch is computed once and no answer
moves. `--prompt-cache` reuses every cached token and evaluates only what follows the common prefix (llama.cpp
server's cache_prompt): a lower time to first token still, but a prefill of another shape rounds differently,
so a greedy answer can then depend on the requests before it. `--from-scratch` prefills every prompt whole
(scripts/bench_serve.py measures all three).

With --router (a router.json written by `slmkit route`), each chat request is routed live between the local GGUF
the router was fitted on and the remote endpoint (or the recipe's local stand-in for it, served again); the
answer says who answered and why (X-Slmkit-Route headers, a `slmkit_route` field), a failing remote falls back
to the local answer, a local answer that fails the task's validation escalates, and GET /v1/route/stats counts.
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.pipelines.core.defaults import N_CTX

NAME = "serve"
NO_ARGS_HELP = True


def command(
    model: Path = typer.Argument(None, help="GGUF file to serve (not with --router)"),
    port: int = typer.Option(18080, "--port", "-p", min=1, max=65535, help="port to listen on"),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="address to listen on (0.0.0.0 or :: for every interface: use --api-key-env)"),
    delay_ms: int = typer.Option(0, "--delay-ms", min=0,
                                 help="extra latency before the first byte of every answer, in milliseconds"),
    n_ctx: int = typer.Option(N_CTX["serve"], "--n-ctx", min=1, help="context length (prompt plus answer, in tokens)"),
    threads: int | None = typer.Option(None, "--threads", min=1, show_default="all cores",
                                       help="CPU threads for the model (with --parallel: the total, split "
                                            "evenly across the slots)"),
    parallel: int = typer.Option(1, "--parallel", min=1,
                                 help="slots: independent llama.cpp contexts over the same (shared, mmap'd) "
                                      "weights, each answering one request at a time; others wait in order"),
    prompt_cache: bool = typer.Option(False, "--prompt-cache",
                                      help="reuse every cached token of the previous prompt's KV for a shared "
                                           "prefix: faster first token, but answers may then depend on earlier requests"),
    from_scratch: bool = typer.Option(False, "--from-scratch",
                                      help="prefill every prompt whole (no KV reuse at all; slower, same answers)"),
    api_key_env: str | None = typer.Option(None, "--api-key-env", metavar="VAR",
                                           help="require 'Authorization: Bearer <key>' on /v1, the key read from "
                                                "this environment variable (never printed)"),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1,
                                       help="largest request body accepted (413 beyond)"),
    router: Path = typer.Option(None, "--router", help="serve this router.json (from `slmkit route`) instead of "
                                                       "one model"),
    local: Path = typer.Option(None, "--local", help="with --router: the local GGUF, if it has moved (it must be "
                                                     "the file the router was fitted on)"),
    remote_url: str = typer.Option(None, "--remote-url", help="with --router: the remote endpoint's base URL "
                                                              "(default: router.json's, or its served stand-in)"),
) -> None:
    from slmkit.pipelines.core.errors import SlmkitError

    if router is not None:
        if model is not None:
            raise SlmkitError("slmkit serve: give a GGUF file or --router, not both")
        from slmkit.pipelines.serving.router_server import serve_router

        serve_router(router, port, host=host, local=local, remote_url=remote_url, n_threads=threads,
                     api_key_env=api_key_env)
        return
    if model is None:
        raise SlmkitError("slmkit serve: give the GGUF file to serve (or --router ROUTER_JSON)")
    if local is not None or remote_url is not None:
        raise SlmkitError("slmkit serve: --local and --remote-url go with --router")
    from slmkit.pipelines.serving.server import serve_forever

    serve_forever(model, port, delay_ms, n_ctx, threads, host=host, prompt_cache=prompt_cache,
                  api_key_env=api_key_env, max_body_bytes=max_body_bytes, parallel=parallel, from_scratch=from_scratch)
