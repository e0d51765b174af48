"""Running the targets over the task's prompts, interleaved: warm-up, then item by item, A B C D A B C D …

Every target is loaded at once, each local one (gguf, hf) in a child process of its own (spawn: a fresh
interpreter, nothing inherited), so its peak RSS is its real footprint and one target's memory never inflates
another's. An endpoint runs in this process. Requests go one at a time, each item to every target in turn, so
a change of load on the machine (a neighbour starting, a thermal step) falls on every target alike and a ratio
between two targets, taken item by item, stays what the models make it. A request that fails is recorded and
the target goes on; a target that cannot start, or whose worker dies, is reported and the others go on.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmkit.pipelines.backends import LOCAL
from slmkit.pipelines.bench.targets import BenchClient, Target


class TargetFailed(Exception):
    """The target could not run at all (model failed to load, worker died)."""


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


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


# ---------------------------------------------------------------- workers: one per target

class _InProcess:
    """An endpoint's client, in this process (its model runs elsewhere; its memory is not ours to report)."""

    def __init__(self, target: Target):
        started = time.perf_counter()
        try:
            self.backend = BenchClient(target)
        except Exception as exc:  # noqa: BLE001 - the target fails, the others go on
            raise TargetFailed(_error(exc)) from exc
        self.load_s = time.perf_counter() - started

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> dict[str, Any]:
        return asdict(self.backend.request(prompt, max_tokens, stop))

    def close(self) -> float | None:
        self.backend.close()
        return None


def _serve_child(target: dict, conn) -> None:
    """The child's loop: load the backend, then answer ("request", …) until ("close",)."""
    try:
        started = time.perf_counter()
        backend = BenchClient(Target(**target))
        conn.send(("ready", time.perf_counter() - started))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the target's failure
        conn.send(("failed", _error(exc)))
        return
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            try:
                conn.send(("reply", asdict(backend.request(*msg[1:]))))
            except Exception as exc:  # noqa: BLE001 - one failed request must not end the target
                conn.send(("error", _error(exc)))
    finally:
        backend.close()
    conn.send(("closed", own_peak_rss_mb()))


class _Child:
    """A local target in a spawned process of its own, driven one request at a time over a pipe."""

    def __init__(self, target: Target):
        ctx = mp.get_context("spawn")
        self.label = target.label
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_child, args=(asdict(target), child_end), daemon=True)
        self.proc.start()
        child_end.close()
        self.load_s: float | None = None

    def _recv(self) -> tuple:
        # Poll with a short timeout so a worker that dies (out of memory, a crash in native code) is noticed.
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise TargetFailed(f"the worker process for '{self.label}' died (exit code {self.proc.exitcode})")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(timeout=5)
            raise TargetFailed(f"the worker process for '{self.label}' died (exit code {self.proc.exitcode})") \
                from None

    def wait_ready(self) -> None:
        kind, payload = self._recv()
        if kind == "failed":
            self.stop()
            raise TargetFailed(payload)
        self.load_s = payload

    def request(self, prompt: str, max_tokens: int, stop: list[str]) -> dict[str, Any]:
        self.conn.send(("request", prompt, max_tokens, stop))
        kind, payload = self._recv()
        if kind == "error":
            raise RuntimeError(payload)
        return payload

    def close(self) -> float | None:
        try:
            self.conn.send(("close",))
            kind, payload = self._recv()
            return payload if kind == "closed" else None
        except (TargetFailed, OSError):
            return None
        finally:
            self.stop()

    def stop(self) -> None:
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()


# ---------------------------------------------------------------- the interleaved run

@dataclass
class Outcome:
    """One target's part of the run."""

    records: list[dict[str, Any]] = field(default_factory=list)
    warmup_errors: list[str] = field(default_factory=list)
    load_s: float | None = None
    peak_rss_mb: float | None = None
    failed: str | None = None  # why the target has no (more) results


def _start(targets: list[Target], outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """Every target's worker, loaded at once (children load in parallel); a failed start is that target's."""
    workers: dict[str, Any] = {}
    for t in targets:
        try:
            workers[t.label] = _Child(t) if t.kind in LOCAL else _InProcess(t)
        except TargetFailed as exc:
            outcomes[t.label].failed = str(exc)
    for label, w in list(workers.items()):
        if isinstance(w, _Child):
            try:
                w.wait_ready()
            except TargetFailed as exc:
                outcomes[label].failed = str(exc)
                del workers[label]
        outcomes[label].load_s = round(w.load_s, 3) if w.load_s is not None else None
    return workers


def measure(targets: list[Target], prompts: list[tuple[str, str]], max_tokens: int, stop: list[str], warmup: int,
            repeats: int, progress: Callable[[str, int], None] = lambda label, n: None) -> dict[str, Outcome]:
    """Warm-up requests (not results), then `repeats` passes; each item goes to every target in turn."""
    outcomes = {t.label: Outcome() for t in targets}
    workers = _start(targets, outcomes)

    def ask(label: str, prompt: str) -> dict[str, Any]:
        try:
            return workers[label].request(prompt, max_tokens, stop)
        except TargetFailed as exc:  # the worker is gone: this target has no more answers
            outcomes[label].failed = str(exc)
            workers.pop(label)
            raise

    try:
        for i in range(warmup):
            # Warm up from the end of the list, so no timed request follows its own prompt.
            prompt = prompts[-1 - i % len(prompts)][1]
            for label in list(workers):
                try:
                    ask(label, prompt)
                except Exception as exc:  # noqa: BLE001 - a failed warm-up is reported; the timed passes still run
                    outcomes[label].warmup_errors.append(_error(exc))
                progress(label, 1)
        for rep in range(repeats):
            for item_id, prompt in prompts:
                for label in list(workers):
                    rec: dict[str, Any] = {"id": item_id, "pass": rep}
                    try:
                        rec.update(ask(label, prompt))
                    except Exception as exc:  # noqa: BLE001 - one failed request must not end the target
                        rec["error"] = str(exc)[:500] if isinstance(exc, (RuntimeError, TargetFailed)) else _error(exc)
                    outcomes[label].records.append(rec)
                    progress(label, 1)
    finally:
        for label, w in workers.items():
            outcomes[label].peak_rss_mb = w.close()
    return outcomes
