"""JSONL in and out. Reading inputs with errors that name the file and line: one reader for every stage that
takes a JSONL file a user wrote (prompts, few-shot pairs, eval items, training records, seeds, calibration
text); curate's loader is the exception: it may skip a bad line and count it (`on_error: skip`), so it keeps its
own. Writing: `write_jsonl`, the one JSONL writer for stage outputs (atomic, like rundir.write_text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from slmkit.pipelines.core.errors import SlmkitError


class Record(NamedTuple):
    where: str  # "FILE:LINE", for error messages
    lineno: int
    value: Any


def read_text(path: Path) -> str:
    """A user's text file as UTF-8 (a BOM is dropped). A byte that is not UTF-8 is an SlmkitError naming
    FILE:LINE:COLUMN and the byte, an unreadable file one naming the file: never a UnicodeDecodeError traceback."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SlmkitError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SlmkitError(f"{where_byte(path, data, err.start)}: not UTF-8 text{utf16} ({err.reason}: byte "
                          f"0x{data[err.start]:02x}); save the file as UTF-8") from None


def where_byte(path: Path, data: bytes, offset: int) -> str:
    """FILE:LINE:COLUMN of a byte offset (1-based; the column counts bytes)."""
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"{path}:{line}:{column}"


def load_json(path: Path) -> Any:
    """A whole JSON document, with errors that name FILE:LINE (encoding, syntax) instead of a traceback."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SlmkitError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None


def records(path: Path, *, objects: bool = True) -> Iterator[Record]:
    """A Record per non-blank line. A line that is not JSON — or, with `objects`, not a JSON object —
    raises an SlmkitError naming FILE:LINE, so nothing is skipped without the user knowing."""
    path = Path(path)
    text = read_text(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise SlmkitError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if objects and not isinstance(value, dict):
            raise SlmkitError(f"{where}: expected a JSON object, got {type(value).__name__}")
        yield Record(where, lineno, value)


def few_shot_pairs(path: Path) -> list[tuple[str, str]]:
    """(user, assistant) per line of a few-shot file: {prompt, response} or {user, assistant}.

    The prompt must be a string. The answer may be a string, or any other JSON value (an object, a list, a
    number), which is written as compact JSON text: that is what the model is shown and what it should answer
    with, and it spares the user quoting JSON inside JSON. distill's teacher and bench's prompts read the same
    file through this one function, so a shot means the same thing to both."""
    pairs = []
    for where, _, rec in records(path):
        user, answer = rec.get("prompt", rec.get("user")), rec.get("response", rec.get("assistant"))
        if not isinstance(user, str) or answer is None:
            raise SlmkitError(f"{where}: a few-shot line needs 'prompt' and 'response' (or 'user' and 'assistant');"
                              f" the prompt a string")
        pairs.append((user, answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)))
    if not pairs:
        raise SlmkitError(f"{path}: no few-shot pairs")
    return pairs


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """One JSON object per line (UTF-8, non-ASCII kept), written to a temporary name and renamed when complete: a
    kill never leaves a short file under the final name, and a full disk is an error naming the path. Returns
    the number of lines written."""
    from slmkit.pipelines.core.rundir import _unlink_quietly, write_error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise write_error(path, err) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return n
