"""Memory of a process tree, read as PSS (proportional set size): pages that several processes share (a model
file two of them map, a forked worker's copy-on-write pages, Ray's object store) count once, split between
them, so the sum over the tree is what the tree takes from the machine. The benchmarks that measure whole
runs (scripts/bench_run_memory.py, scripts/bench_curate.py) sample it while the run goes on."""

from __future__ import annotations

from typing import NamedTuple

import psutil


class ProcMemory(NamedTuple):
    pid: int
    name: str  # the process's name ("python3.11", "ray::IDLE")
    cmd: str  # the first words of its command line, for a reader to tell the processes apart
    pss: int  # bytes
    rss: int  # bytes


def tree_memory(root: psutil.Process) -> list[ProcMemory]:
    """`root` and every descendant now; a process that exits while it is read is left out (all of them, once
    `root` itself has gone: nothing is left to walk from)."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    rows = []
    for p in tree:
        try:
            with p.oneshot():
                info = p.memory_full_info()
                name = p.name()
                rows.append(ProcMemory(p.pid, name, " ".join(p.cmdline()[:3])[:80] or name, info.pss, info.rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rows
