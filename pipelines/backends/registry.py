"""Model clients by `kind`. A new kind is one class with `@register("kind")`; every caller (distill's teacher,
bench's targets, the router and agent benchmarks) gets it through `make_client`."""

from __future__ import annotations

import dataclasses
import importlib
import threading

from slmkit.pipelines.backends.base import Client, ClientSpec
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy

CLIENTS: dict[str, type] = {}
# The modules that register the built-in kinds, imported on first use (each pulls a heavy library).
BUILTIN = {"openai": "openai_client", "gguf": "gguf_client", "hf": "hf_client"}
LOCAL = {"gguf", "hf"}  # run on this machine's cores, one request at a time


def register(kind: str):
    def add(cls: type) -> type:
        CLIENTS[kind] = cls
        return cls
    return add


def client_class(kind: str) -> type:
    if kind not in CLIENTS and kind in BUILTIN:
        importlib.import_module(f"slmkit.pipelines.backends.{BUILTIN[kind]}")
    if kind not in CLIENTS:
        raise ValueError(f"no model client of kind '{kind}' (known: {', '.join(sorted({*BUILTIN, *CLIENTS}))})")
    return CLIENTS[kind]


def make_client(spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None) -> Client:
    """The client for `spec.kind`. `policy` is the caller's (a paid teacher retries; a benchmark does not);
    `stop`, once set, sends no new request (local clients: checked by the caller between requests)."""
    if isinstance(spec.location, list):
        if len(spec.location) > 1:  # several endpoints of one model: a pool spreads the requests
            from slmkit.pipelines.backends.pool import EndpointPool

            return EndpointPool(spec, policy=policy, stop=stop)
        spec = dataclasses.replace(spec, location=spec.location[0])
    return client_class(spec.kind)(spec, policy=policy, stop=stop)
