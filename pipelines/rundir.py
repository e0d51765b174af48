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

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from slmkit.pipelines.errors import SlmkitError
from slmkit.pipelines.stage import Outcome, Stage, StageContext, StageResult

from slmkit import __version__

DONE = "DONE.json"
RUNNING = "RUNNING.json"
FAILED = "FAILED.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def partial_of(stage_dir: Path) -> Path:
    return stage_dir.with_name(stage_dir.name + ".partial")


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
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        write_json(partial / FAILED, {"stage": stage.name, "fingerprint": fingerprint, "error": reason,
                                      "failed": now(), "seconds": round(time.time() - started, 2),
                                      "traceback": None if isinstance(exc, SlmkitError) else traceback.format_exc()})
        (partial / RUNNING).unlink(missing_ok=True)
        raise
    shutil.rmtree(state, ignore_errors=True)
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
    write_json(partial / DONE, done)
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
