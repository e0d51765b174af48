"""tree_memory: the benchmarks' whole-run memory reads every process under the root, children included, and
counts a child's own pages (not only the root's)."""

from __future__ import annotations

import subprocess
import sys

import psutil

from slmkit.pipelines.core.proc_memory import tree_memory

# a child that owns 200 MB of touched pages, says so, and waits to be read
HOLD = "import sys; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); sys.stdin.read()"


def test_a_child_and_its_pages_are_counted():
    child = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        rows = tree_memory(psutil.Process())
        assert rows[0].pid == psutil.Process().pid
        mine = {r.pid: r for r in rows}
        assert child.pid in mine, "the child is part of the tree"
        assert mine[child.pid].pss >= 200 * 2**20 and mine[child.pid].rss >= mine[child.pid].pss
        assert "-c" in mine[child.pid].cmd and mine[child.pid].name.startswith("python")
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert child.pid not in {r.pid for r in tree_memory(psutil.Process())}, "an ended child is not read"


def test_a_root_that_has_gone_reads_as_nothing():
    """An attached benchmark (bench_run_memory --attach) keeps sampling a run it did not start until the run
    exits; the sample after that finds nothing instead of raising in the sampler's thread."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    watched = psutil.Process(child.pid)
    child.wait(timeout=30)
    assert tree_memory(watched) == []
