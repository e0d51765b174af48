"""The run directory: the one place that knows what is done.

    runs/<name>/manifest.json          resolved recipe, package versions, git sha, host
    runs/<name>/NN_stage/              a finished stage's outputs, with DONE.json (fingerprint, metrics)
    runs/<name>/NN_stage.partial/      a stage at work: outputs being written, RUNNING.json, .state/ checkpoints
    runs/<name>/cache/                 run-wide caches that outlive any one stage attempt

A stage writes into `.partial`; only when its run returns is DONE.json written there and the folder renamed
into place, so a killed stage never leaves a DONE marker and a half-written output is never taken for a
finished one. The same mechanics serve a stage verb run on its own (`slmkit quantize --out DIR`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slmkit import __version__
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.stage import Outcome, Stage, StageContext, StageResult

DONE = "DONE.json"
RUNNING = "RUNNING.json"
FAILED = "FAILED.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def os_error_text(err: OSError) -> str:
    """What an OSError says, never "None": numpy's and some libraries' errors carry no strerror."""
    if err.strerror:
        return err.strerror
    if err.errno:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def write_error(path: Path, err: OSError, needed: int | None = None, what: str = "cannot write") -> SlmkitError:
    """An SlmkitError for a failed write that names the path and, for a full disk, the bytes needed and free."""
    path = Path(path)
    msg = f"{path}: {what} ({os_error_text(err)})"
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    short = err.errno is None and _SHORT_WRITE.search(str(err))  # numpy's tofile: "N requested and M written"
    if full:
        hint = "the disk is full"
    elif short:
        hint = "only part of it was written: is the disk full?"
    elif err.errno == errno.EFBIG:
        hint = "the file size limit (ulimit -f) was reached"
    else:
        hint = None
    if hint:
        free = None if err.errno == errno.EFBIG else _free_bytes(path.parent)
        sizes = ", ".join(([f"{needed:,} bytes needed"] if needed is not None else [])
                          + ([f"{free:,} bytes free there"] if free is not None else []))
        msg += f"; {hint}" + (f" ({sizes})" if sizes else "")
    return SlmkitError(msg)


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: a reader sees the old file or the new one, never half of one.

    The one atomic writer for slmkit's own small files (DONE/RUNNING/FAILED.json, reports, the Modelfile). On any
    failure its temporary file is removed; an OSError (a full disk, a read-only folder) becomes an SlmkitError
    naming the path and, for a full disk, the bytes needed."""
    path = Path(path)
    data = text.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise write_error(path, err, len(data)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def partial_of(stage_dir: Path) -> Path:
    return stage_dir.with_name(stage_dir.name + ".partial")


# ---------------------------------------------------------------- lock

LOCK = ".lock"


@contextmanager
def locked(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on `lock_path` for the block, or refuse at once naming the holder's PID.

    The kernel drops the lock when the holding process ends, however it ends (kill -9 included), so a lock is
    never stale and nothing needs cleaning up; the file itself stays (removing it would let two processes lock
    two different files). Held per open file, so a second lock of one path in the same process refuses too."""
    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_error(lock_path, err, what="cannot create the lock file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            who = f"PID {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else \
                "a process that has not yet written its PID"
            raise SlmkitError(f"{what} is in use by another slmkit process ({who}; lock {lock_path}): "
                              "wait for it to finish, or stop it, then rerun") from None
        try:  # who holds it, for the message above; on a full disk the lock still holds without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_run(root: Path) -> Any:
    """The lock of a run directory: runs/<name>/.lock, held while a run or stage verb works in it."""
    return locked(Path(root) / LOCK, f"run directory {root}")


def lock_out(out: Path) -> Any:
    """The lock of a standalone verb's --out folder. It lies beside the folder, not in it, because the folder is
    renamed into place when the stage finishes: .<name>.lock."""
    out = Path(out)
    return locked(out.with_name(f".{out.name}.lock"), f"output folder {out}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attempt_state(stage_dir: Path) -> tuple[str, dict | None]:
    """('running'|'failed'|'none', details) for the attempt in the .partial folder, if any."""
    partial = partial_of(stage_dir)
    failed = read_json(partial / FAILED)
    if failed:
        return "failed", failed
    running = read_json(partial / RUNNING)
    if running:
        alive = running.get("host") == socket.gethostname() and _pid_alive(int(running.get("pid", -1)))
        if alive:
            return "running", running
        return "failed", {**running, "error": "interrupted (the process died without finishing)"}
    return "none", None


def result_of(stage: str, stage_dir: Path) -> StageResult | None:
    done = read_json(stage_dir / DONE)
    if not done:
        return None
    return StageResult(stage, stage_dir, done.get("outputs", {}), done.get("metrics", {}), done.get("fingerprint", ""))


def upstream_token(result: StageResult) -> str:
    """How a downstream stage names an upstream result: its fingerprint and the id of the attempt that made it,
    so that a forced rerun of an upstream stage (same config, new outputs) makes its downstream stale."""
    done = read_json(result.dir / DONE) or {}
    return f"{result.fingerprint}:{done.get('attempt', '')}"


def _record_failure(partial: Path, stage: str, fingerprint: str, started: float, exc: BaseException) -> None:
    """FAILED.json for an attempt that raised. Best effort, so that the error the user sees is the stage's own:
    on a full disk FAILED.json may not fit either, and then the dead process's RUNNING.json tells status."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
    _unlink_quietly(partial / DONE)
    try:
        write_json(partial / FAILED, {"stage": stage, "fingerprint": fingerprint, "error": reason,
                                      "failed": now(), "seconds": round(time.time() - started, 2),
                                      "traceback": None if isinstance(exc, SlmkitError) else traceback.format_exc()})
    except SlmkitError:
        return  # RUNNING.json stays: it keeps the attempt's fingerprint, so the rerun resumes its checkpoints
    _unlink_quietly(partial / RUNNING)


def execute_stage(
    stage: Stage,
    config: Any,
    stage_dir: Path,
    fingerprint: str,
    upstream: dict[str, StageResult],
    cache: Path,
    record: dict,
    **ctx_kwargs: Any,
) -> StageResult:
    """Run one stage into `stage_dir` with the partial/DONE protocol; returns its result."""
    partial = partial_of(stage_dir)
    running = read_json(partial / RUNNING) or read_json(partial / FAILED) or {}
    if partial.exists() and running.get("fingerprint") != fingerprint:
        # Checkpoints of a different config would resume the wrong thing: start clean.
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / FAILED).unlink(missing_ok=True)
    state = partial / ".state"
    state.mkdir(exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    attempt = uuid.uuid4().hex[:12]
    started = time.time()
    write_json(partial / RUNNING, {"stage": stage.name, "fingerprint": fingerprint, "pid": os.getpid(),
                                   "host": socket.gethostname(), "started": now(), "attempt": attempt})
    ctx = StageContext(stage=stage.name, out=partial, state=state, cache=cache, upstream=upstream,
                       fingerprint=fingerprint, **ctx_kwargs)
    try:
        outcome = stage.run(config, ctx) or Outcome()
        for key, rel in outcome.outputs.items():
            if not (partial / rel).exists():
                raise SlmkitError(f"stage '{stage.name}' reported output '{key}' = {rel}, which it did not write")
        done = {
            **record,
            "stage": stage.name,
            "fingerprint": fingerprint,
            "attempt": attempt,
            "outputs": outcome.outputs,
            "metrics": outcome.metrics,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "finished": now(),
            "seconds": round(time.time() - started, 2),
            "slmkit": __version__,
        }
        write_json(partial / DONE, done)  # atomic: on a full disk it is not there at all
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
        _record_failure(partial, stage.name, fingerprint, started, exc)
        raise
    # Checkpoints go only once DONE is written: a failure before this point keeps them for the rerun.
    shutil.rmtree(state, ignore_errors=True)
    (partial / RUNNING).unlink(missing_ok=True)
    # Swap in the finished folder; the previous result is removed only once the new one is in place.
    old = stage_dir.with_name(stage_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if stage_dir.exists():
        stage_dir.rename(old)
    partial.rename(stage_dir)
    shutil.rmtree(old, ignore_errors=True)
    return StageResult(stage.name, stage_dir, outcome.outputs, outcome.metrics, fingerprint)


# ---------------------------------------------------------------- manifest


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "slmkit": __version__}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "gguf", "llama-cpp-python",
                "bitsandbytes", "lm-eval", "trl"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _git_sha() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(dirty) if dirty is not None else None}


def _host() -> dict[str, Any]:
    import psutil

    return {"hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def write_manifest(root: Path, recipe: dict, recipe_file: str | None, overrides: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.json"
    previous = read_json(path) or {}
    manifest = {
        "name": recipe.get("name"),
        "recipe_file": recipe_file,
        "overrides": overrides,
        "recipe": recipe,
        "versions": _versions(),
        "git": _git_sha(),
        "host": _host(),
        "argv": sys.argv[1:],
        "created": previous.get("created", now()),
        "updated": now(),
    }
    write_json(path, manifest)
    return manifest
