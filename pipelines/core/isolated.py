"""Run a heavy one-off step in a fresh process, so the memory it takes goes back to the OS when it ends.

`slmkit run` is one long-lived process through every stage. A step that loads a model in torch once (turning a
shipped GGUF into an HF folder, exporting a teacher to F16) leaves hundreds of MB behind in the allocator's
arenas even after the tensors are freed, and every later stage then peaks on top of that; the demo's distill
held 1.3 GB of such leftovers beside its teacher for 18 minutes. A spawned child (not forked: it shares nothing
the parent already holds) does the step and exits; its error comes back as the parent's SlmkitError.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Any

from slmkit.pipelines.core.errors import SlmkitError


def _child(queue, fn: Callable[..., Any], args: tuple) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        queue.put((False, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    queue.put((True, None))


def run_in_child(fn: Callable[..., Any], *args: Any, what: str) -> None:
    """fn(*args) in a spawned process (fn and args must pickle: a module-level function and plain values)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(queue, fn, args), name=f"slmkit: {what}")
    proc.start()
    try:
        proc.join()
    except BaseException:  # Ctrl-C reaches the child too (same process group); do not leave it running
        proc.terminate()
        proc.join()
        raise
    ok, err = queue.get() if not queue.empty() else (False, f"the process ended with exit code {proc.exitcode}")
    if not ok:
        raise SlmkitError(f"{what}: {err}")


def release_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc's malloc_trim; a no-op on other
    C libraries). Called between stages: what a stage freed should not count against the next one's peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
