"""A real OpenAI-compatible endpoint on loopback for the length of a stage: the demo's teacher and its
stand-in for a cloud baseline.

`serve` names a GGUF file; a known causal LM (see models.KNOWN), which is prepared and exported once to an F16
GGUF in slmkit's cache; or a known model with `:shipped` after its name, the GGUF file its package ships, served
as it ships. The demo's teacher is `gemma3-270m:shipped`: its package ships Q4_K_M, so an F16 export of it holds
the same information at twice the size, and costs a child process of ~3.4 GB and ~90 s to make, once per model
cache. A user with an API key replaces all of this with `base_url`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from slmkit.pipelines.core import models
from slmkit.pipelines.core.defaults import N_CTX
from slmkit.pipelines.core.errors import SlmkitError

SHIPPED = ":shipped"  # after a known model's name: the GGUF file its package ships, not slmkit's F16 export


def served_gguf(serve: str) -> Path:
    """The GGUF file behind `serve`: a path as given, a known model's shipped file (`NAME:shipped`), or the
    cached F16 export of a known model."""
    path = Path(serve).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SlmkitError(f"serve: no GGUF file at {path}")
        return path
    name = serve.removesuffix(SHIPPED)
    if name not in models.KNOWN or models.KNOWN[name].kind != "causal-lm":
        known = ", ".join(n for n, m in models.KNOWN.items() if m.kind == "causal-lm")
        raise SlmkitError(f"serve: '{serve}' is neither a .gguf file nor a known model ({known}; "
                          f"'NAME{SHIPPED}' for the file its package ships)")
    if name != serve:
        try:
            return models.shipped_gguf(name)
        except SlmkitError as exc:
            raise SlmkitError(f"serve: '{serve}': {exc}") from None
    target = models.cache_root() / "gguf" / f"{serve}-f16.gguf"
    if not target.is_file():
        from slmkit.pipelines.core.isolated import run_in_child

        # In a child process, so that the HF weights it loads do not stay in this one beside the served model.
        run_in_child(_export, serve, target, what=f"exporting {serve} to {target.name}")
    return target


def _export(serve: str, target: Path) -> None:
    from slmkit.pipelines.quantize.gguf_export import export

    # export() writes a .partial file and renames it, so an interrupted export is never served.
    export(Path(models.resolve(serve)), target, "f16", name=serve)


@contextlib.contextmanager
def local_endpoint(serve: str, delay_ms: int = 0, n_threads: int | None = None,
                   n_ctx: int = N_CTX["bench"], prompt_cache: bool = False,
                   from_scratch: bool = False) -> Iterator[tuple[str, str]]:
    """Serve `serve` on 127.0.0.1 while the block runs; yields (base_url, model_id).

    What the server keeps between requests is `slmkit serve`'s choice (pipelines/backends/prefix_reuse.py):
    whole prefill batches of a shared prefix by default; `prompt_cache=True` every cached token (an answer may
    then depend on the requests before it); `from_scratch=True` nothing."""
    from slmkit.pipelines.serving.server import serve_gguf

    path = served_gguf(serve)
    with serve_gguf(path, delay_ms=delay_ms, n_ctx=n_ctx, n_threads=n_threads,
                    prompt_cache=prompt_cache, from_scratch=from_scratch) as base_url:
        yield base_url, path.stem
