"""Fingerprints: what a stage's result depends on, hashed, so a rerun knows what it may skip.

fingerprint(stage) = sha256(stage name, its config, its upstream stages' fingerprints, digests of its inputs)
File digests are content hashes, remembered per (path, size, mtime) so that an unchanged multi-GB model is
not read again on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

_memo: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def canonical(obj: Any) -> str:
    """A stable JSON text for hashing: sorted keys, paths and other objects as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _memo:
            return _memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _memo[key] = digest
    return digest


def digest_path(path: Path) -> str:
    """Content digest of a file, or of a folder's files (names and contents, sorted; hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return digest_file(path)
    if not path.exists():
        return "missing"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = Path(root) / name
            h.update(str(full.relative_to(path)).encode())
            h.update(digest_file(full).encode())
    return h.hexdigest()


def fingerprint(stage: str, config: dict, upstream: dict[str, str], inputs: dict[str, str]) -> str:
    return sha256_text(canonical({"stage": stage, "config": config, "upstream": upstream, "inputs": inputs}))
