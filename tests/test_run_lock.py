"""A run directory at work: Ctrl-C and SIGTERM end `slmkit run` with exit 130 and a message, leaving FAILED.json and
no DONE.json; a second run of the same directory refuses at once, naming the holder's PID; a killed holder's lock
is gone with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# `slmkit` itself (cli/app.py:main), with the curate row of the stage table swapped for a stage that announces
# itself in a marker file and then works until it is told to stop (or `seconds` pass).
DRIVER = '''
import os, sys, time
from dataclasses import replace
from pathlib import Path

from slmkit.pipelines.core.stage import Outcome
from slmkit.pipelines.core.stages import STAGES
from slmkit.pipelines.core.types import StrictModel


class Slow(StrictModel):
    marker: str
    seconds: float = 600


def slow(cfg, ctx):
    (ctx.out / "half.txt").write_text("half")
    Path(cfg.marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + cfg.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    (ctx.out / "train.txt").write_text("done")
    return Outcome({"train": "train.txt"}, {})


STAGES["curate"] = replace(STAGES["curate"], config=Slow, run=slow)
from slmkit.cli.app import main

sys.argv[0] = "slmkit"
main()
'''

WAIT = 240  # seconds: generous bounds for a loaded machine; the tests never depend on how fast it is


def setup_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(f"name: slow\ncurate:\n  marker: {tmp_path / 'started'}\n")
    return driver, recipe, tmp_path / "runs"


def _as_from_a_terminal() -> None:
    # A job started in the background by a shell (`make test &`, nohup, a CI runner) inherits SIGINT ignored, and
    # Python then installs no Ctrl-C handler: the signal would be dropped, as the shell intends for background
    # jobs. The run under test is the foreground program a user presses Ctrl-C in, so it starts with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(driver: Path, recipe: Path, runs: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(driver), "run", str(recipe), *overrides, "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=recipe.parent,
                            env={**os.environ, "COLUMNS": "1000"},  # Rich wraps at the terminal's width
                            preexec_fn=_as_from_a_terminal)


def wait_started(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before its stage started (rc {proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the stage did not start")
        time.sleep(0.05)
    marker.unlink()


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not end:\n{out}\n{err}")
    return proc.returncode, out, " ".join(err.split())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_exits_130_says_so_and_leaves_failed(tmp_path, sig):
    driver, recipe, runs = setup_run(tmp_path)
    proc = start(driver, recipe, runs)
    wait_started(proc, tmp_path / "started")
    proc.send_signal(sig)
    rc, out, err = finish(proc)
    assert rc == 130, (rc, out, err)
    assert "interrupted" in err and "rerun to resume" in err, err
    assert "Traceback" not in err
    partial = runs / "slow" / "01_curate.partial"
    failed = json.loads((partial / "FAILED.json").read_text())
    assert failed["error"] == "interrupted"
    assert not (partial / "RUNNING.json").exists()
    assert not (runs / "slow" / "01_curate").exists()
    assert not list(runs.rglob("DONE.json"))
    assert not list(runs.rglob("*.tmp"))


def test_second_run_refuses_at_once_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    driver, recipe, runs = setup_run(tmp_path)
    first = start(driver, recipe, runs)
    try:
        wait_started(first, tmp_path / "started")
        # The first run would work for 600 s: the second ends long before, without waiting for it.
        second = start(driver, recipe, runs, "curate.seconds=0")
        rc, out, err = finish(second)
        assert first.poll() is None  # still at work: the second did not wait for it
        assert rc != 0
        assert f"PID {first.pid}" in err and "in use" in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "started").exists()  # the second never started the stage
        running = json.loads((runs / "slow" / "01_curate.partial" / "RUNNING.json").read_text())
        assert running["pid"] == first.pid  # and did not touch the first one's attempt
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    third = start(driver, recipe, runs, "curate.seconds=0")
    rc, out, err = finish(third)
    assert rc == 0, err
    assert (runs / "slow" / "01_curate" / "DONE.json").exists()
    assert (runs / "slow" / "01_curate" / "train.txt").read_text() == "done"


def test_standalone_out_folder_is_locked(tmp_path, toy_stages):
    """A stage verb's --out folder: one process at a time, the same way (here the holder is this process)."""
    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.rundir import lock_out
    from slmkit.pipelines.core.runner import run_standalone

    (tmp_path / "in.txt").write_text("abc")
    cfg = toy_stages.ToyCurate(text=tmp_path / "in.txt")
    out = tmp_path / "out"
    with lock_out(out):
        with pytest.raises(SlmkitError, match=f"PID {os.getpid()}"):
            run_standalone("curate", cfg, out)
        assert toy_stages.CALLS == [] and not out.exists()
    run_standalone("curate", cfg, out)  # released: it runs
    assert toy_stages.CALLS == ["curate"] and (out / "DONE.json").exists()


def test_run_in_process_refuses_while_locked(tmp_path, toy_stages, tiny_model_dir):
    from toy_stages import write_recipe

    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.rundir import lock_run
    from slmkit.pipelines.core.runner import Run

    run = Run.open(load_recipe(write_recipe(tmp_path, tiny_model_dir)), tmp_path / "runs")
    with lock_run(run.root):
        with pytest.raises(SlmkitError, match=f"in use by another slmkit process \\(PID {os.getpid()}"):
            run.execute()
    assert toy_stages.CALLS == [] and not (run.root / "manifest.json").exists()
