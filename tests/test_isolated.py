"""run_in_child: the step runs in another process, its result (a file) stays, and its error comes back named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.isolated import release_memory, run_in_child


def write_pid(path: Path) -> None:
    path.write_text(str(os.getpid()))


def fail(message: str) -> None:
    raise ValueError(message)


def test_the_step_runs_in_another_process_and_its_error_comes_back(tmp_path):
    run_in_child(write_pid, tmp_path / "pid", what="writing")
    assert int((tmp_path / "pid").read_text()) != os.getpid()
    with pytest.raises(SlmkitError, match=r"^preparing x: ValueError: no such tensor$"):
        run_in_child(fail, "no such tensor", what="preparing x")
    release_memory()  # callable anywhere, whatever the C library
