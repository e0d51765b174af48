"""Reading JSONL inputs with errors that name the file and line: one reader for every stage that takes a JSONL
file a user wrote (prompts, few-shot pairs, eval items, training records, seeds, calibration text).

curate's loader is the exception: it may skip a bad line and count it (`on_error: skip`), so it keeps its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from slmkit.pipelines.errors import SlmkitError


class Record(NamedTuple):
    where: str  # "FILE:LINE", for error messages
    lineno: int
    value: Any


def records(path: Path, *, objects: bool = True) -> Iterator[Record]:
    """A Record per non-blank line. A line that is not JSON — or, with `objects`, not a JSON object —
    raises an SlmkitError naming FILE:LINE, so nothing is skipped without the user knowing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SlmkitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise SlmkitError(f"{path}: cannot read ({err.strerror})") from None
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
