"""Running one target over the task's prompts: warm-up, timed passes, one record per request.

A local target (gguf, hf) runs in a child process of its own (spawn: a fresh interpreter, nothing inherited),
so its peak RSS is its real footprint and one target's memory never inflates the next one's figure. An endpoint
runs in this process. A request that fails is recorded and the target goes on; a target that cannot start at
all raises `TargetFailed`.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slmkit.pipelines.bench_targets import BACKENDS, LOCAL, Target


class TargetFailed(Exception):
    """The target could not run at all (model failed to load, worker died)."""


def measure(target: Target, prompts: list[tuple[str, str]], max_tokens: int, stop: list[str], warmup: int,
            repeats: int, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Warm-up requests (not recorded as results), then `repeats` passes over the prompts."""
    started = time.perf_counter()
    backend = BACKENDS[target.kind](target)
    load_s = time.perf_counter() - started
    warmup_errors = []
    try:
        for i in range(warmup):
            try:
                # Warm up from the end of the list: the first timed request then does not find its own prompt
                # in a prompt cache (llama.cpp keeps the previous request's tokens).
                backend.request(prompts[-1 - i % len(prompts)][1], max_tokens, stop)
            except Exception as exc:  # noqa: BLE001 - a failed warm-up is reported, the timed passes still run
                warmup_errors.append(f"{type(exc).__name__}: {exc}")
            progress(1)
        records = []
        for rep in range(repeats):
            for item_id, prompt in prompts:
                rec: dict[str, Any] = {"id": item_id, "pass": rep}
                try:
                    reply = backend.request(prompt, max_tokens, stop)
                    rec.update(asdict(reply))
                except Exception as exc:  # noqa: BLE001 - one failed request must not end the target
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
                records.append(rec)
                progress(1)
    finally:
        backend.close()
    return {"records": records, "load_s": round(load_s, 3), "warmup_errors": warmup_errors, "peak_rss_mb": None}


def own_peak_rss_mb() -> float:
    """This process's peak resident memory, model and runtime included.

    Linux's ru_maxrss survives exec: a child spawned by a big parent (a `slmkit run` that just fine-tuned)
    reports the parent's peak. VmHWM belongs to the process's current address space, so it starts afresh at
    exec and is the target's own footprint; ru_maxrss is the fallback where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _child(target: dict, args: tuple, out: mp.Queue) -> None:
    try:
        result = measure(Target(**target), *args, progress=lambda n: out.put(("progress", n)))
        result["peak_rss_mb"] = own_peak_rss_mb()
        out.put(("done", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the target's failure
        out.put(("failed", f"{type(exc).__name__}: {exc}"[:1000]))


def run_target(target: Target, prompts: list[tuple[str, str]], max_tokens: int, stop: list[str], warmup: int,
               repeats: int, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """`measure`, in a spawned child for local targets; raises TargetFailed if the target cannot run."""
    args = (prompts, max_tokens, stop, warmup, repeats)
    if target.kind not in LOCAL:
        try:
            return measure(target, *args, progress=progress)
        except Exception as exc:  # noqa: BLE001 - the other targets still run
            raise TargetFailed(f"{type(exc).__name__}: {exc}") from exc
    ctx = mp.get_context("spawn")
    messages: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(asdict(target), args, messages), daemon=True)
    proc.start()
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive() and messages.empty():
                    raise TargetFailed(f"the worker process for '{target.label}' died "
                                       f"(exit code {proc.exitcode})") from None
                continue
            if kind == "progress":
                progress(payload)
            elif kind == "done":
                return payload
            else:
                raise TargetFailed(payload)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
