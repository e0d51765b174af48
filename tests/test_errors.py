"""Messages, not tracebacks: a file that is not UTF-8 is named with its line; a full disk names the path and the
bytes needed, marks nothing done and leaves no temporary file behind.

The full disk is a real kernel error where it can be: a child process whose file-size limit (RLIMIT_FSIZE) is
lowered mid-stage gets EFBIG from every write, as a full disk gives ENOSPC; where the errno itself matters,
os.write is made to fail with ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.pipelines.core import jsonl, rundir
from slmkit.pipelines.core.errors import SlmkitError

BAD = b"\xff\xfe"  # a UTF-16 byte-order mark: never valid UTF-8


def slmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=WIDE)


WIDE = {**os.environ, "COLUMNS": "1000"}  # Rich wraps messages at the terminal's width: one line each here


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


# ---------------------------------------------------------------------------------------------- not UTF-8


def test_jsonl_names_file_line_and_column_of_a_bad_byte(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": "caf' + b"\xe9" + b'"}\n')
    with pytest.raises(SlmkitError, match=r"r\.jsonl:3:11: not UTF-8 text .*byte 0xe9"):
        list(jsonl.records(p))
    p.write_bytes(BAD + '{"a": 1}\n'.encode("utf-16-le"))
    with pytest.raises(SlmkitError, match=r"r\.jsonl:1:1: not UTF-8 text \(it looks like UTF-16\)"):
        list(jsonl.records(p))


def test_json_document_names_file_and_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'[\n  {"text": "ok"},\n  {"text": "\xff"}\n]\n')
    with pytest.raises(SlmkitError, match=r"d\.json:3:13: not UTF-8 text"):
        jsonl.load_json(p)
    p.write_text('[\n  {"text": "ok"},\n  {"text": }\n]\n')
    with pytest.raises(SlmkitError, match=r"d\.json:3: not valid JSON"):
        jsonl.load_json(p)


def test_bench_task_file_not_utf8_names_its_line(tmp_path):
    from slmkit.evals.tasks import TaskConfig, load_items

    p = tmp_path / "eval.jsonl"
    p.write_bytes(b'{"prompt": "p1", "answer": "a"}\n{"prompt": "p2", "answer": "' + BAD + b'"}\n')
    cfg = TaskConfig(data=p)
    with pytest.raises(SlmkitError, match=r"eval\.jsonl:2:\d+: not UTF-8 text"):
        load_items(p, cfg)


@pytest.mark.parametrize("name, content, args, needle", [
    ("in.json", b'[{"text": "caf\xe9 ticket one"}]', ["curate", "-i", "in.json", "--field", "text=text",
                                                       "--out", "o"], "in.json:1:15: not UTF-8 text"),
    ("prompts.txt", b"hello\ncaf\xe9\n", ["distill", "-t", "openai:m@http://127.0.0.1:9/v1", "-p", "prompts.txt",
                                          "--out", "o"], "prompts.txt:2:4: not UTF-8 text"),
    ("prompts.jsonl", b'{"prompt": "' + BAD + b'"}\n', ["distill", "-t", "openai:m@http://127.0.0.1:9/v1", "-p",
                                                          "prompts.jsonl", "--out", "o"],
     "prompts.jsonl:1:13: not UTF-8 text"),
    ("r.yaml", b"name: x\ndescription: caf\xe9\n", ["validate", "r.yaml"], "line 2: not UTF-8 text"),
])
def test_cli_names_a_file_that_is_not_utf8(tmp_path, name, content, args, needle):
    (tmp_path / name).write_bytes(content)
    res = slmkit(*args, cwd=tmp_path)
    err = " ".join(res.stderr.split())
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "UnicodeDecodeError" not in res.stderr, res.stderr
    assert needle in err, err
    assert not list(tmp_path.rglob("DONE.json"))


# ---------------------------------------------------------------------------------------------- a full disk


def test_atomic_write_on_a_full_disk_names_path_and_bytes_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    rundir.write_json(path, {"old": True})

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    payload = {"new": "x" * 5000}
    size = len((json.dumps(payload, indent=2) + "\n").encode())
    with pytest.raises(SlmkitError) as info:
        rundir.write_json(path, payload)
    msg = str(info.value)
    assert str(path) in msg and "No space left on device" in msg and "the disk is full" in msg
    assert f"{size:,} bytes needed" in msg and "bytes free" in msg
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


LIMITED = '''
import json, resource, sys
from pathlib import Path
from slmkit.pipelines.core import rundir
from slmkit.pipelines.core.errors import SlmkitError

resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))  # writes past 1000 bytes fail
try:
    rundir.write_json(Path(sys.argv[1]), {"x": "y" * 5000})
except SlmkitError as exc:
    print("SlmkitError", exc)
'''


def test_atomic_write_failing_in_the_kernel_leaves_no_temp_file(tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    out = tmp_path / "data"
    out.mkdir()
    res = subprocess.run([sys.executable, str(script), str(out / "big.json")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"SlmkitError {out / 'big.json'}: cannot write (File too large)"), res.stdout
    assert list(out.iterdir()) == []


# `slmkit run` with the curate row of the stage table swapped for a stage that fills "the disk" (lowers its own
# file-size limit to 0) and then fails with ENOSPC while writing its output, or returns as if it had succeeded.
DRIVER = '''
import errno, os, resource, sys
from dataclasses import replace
from typing import Literal

from slmkit.pipelines.core.stage import Outcome
from slmkit.pipelines.core.stages import STAGES
from slmkit.pipelines.core.types import StrictModel


class Full(StrictModel):
    when: Literal["writing", "done"]


def fill(cfg, ctx):
    (ctx.state / "checkpoint").write_text("step 1")
    (ctx.out / "train.txt").write_text("written before the disk filled")
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    if cfg.when == "writing":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ctx.out / "big.bin"))
    return Outcome({"train": "train.txt"}, {})


STAGES["curate"] = replace(STAGES["curate"], config=Full, run=fill)
from slmkit.cli.app import main

sys.argv[0] = "slmkit"
main()
'''


@pytest.mark.parametrize("when, needle", [
    ("writing", "01_curate.partial/big.bin: failed (No space left on device); the disk is full"),
    ("done", "01_curate.partial/DONE.json: cannot write (File too large)"),
])
def test_full_disk_in_a_stage_is_a_message_with_nothing_done_and_no_temp_file(tmp_path, when, needle):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    (tmp_path / "full.yaml").write_text(f"name: full\ncurate:\n  when: {when}\n")
    res = subprocess.run([sys.executable, str(driver), "run", "full.yaml", "--runs-dir", "runs"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=WIDE)
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert needle in err, err
    runs = tmp_path / "runs"
    assert not list(runs.rglob("DONE.json"))
    assert not (runs / "full" / "01_curate").exists()
    assert temp_files(runs) == []
    # the attempt's checkpoints survive for the rerun, and status can tell what happened
    assert (runs / "full" / "01_curate.partial" / ".state" / "checkpoint").read_text() == "step 1"
    assert (runs / "full" / "01_curate.partial" / "RUNNING.json").exists()


def test_gguf_short_write_names_path_and_bytes_not_none(tmp_path, tiny_model_dir, monkeypatch):
    """numpy's tofile reports a full disk as OSError("N requested and M written") with no errno: the message once
    read "writing the GGUF failed (None)"."""
    import gguf

    from slmkit.pipelines.quantize import gguf_export

    real = gguf.GGUFWriter.write_tensor_data
    calls = {"n": 0}

    def short(self, tensor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(f"{tensor.size} requested and 0 written")
        return real(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", short)
    with pytest.raises(SlmkitError) as info:
        gguf_export.export(tiny_model_dir, tmp_path / "m.gguf")
    msg = str(info.value)
    assert "None" not in msg
    assert str(tmp_path / "m.gguf") in msg and "requested and 0 written" in msg and "is the disk full?" in msg
    assert "bytes needed" in msg and "no file left behind" in msg
    assert not list(tmp_path.glob("m.gguf*"))
