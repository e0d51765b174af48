"""Peak memory of a local bench target is its own process's, not inherited from a big parent (a `slmkit run`
that has just fine-tuned a model): Linux carries ru_maxrss across exec, VmHWM starts afresh."""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys

import numpy as np
import pytest

from slmkit.pipelines.bench.interleaved import own_peak_rss_mb


def _report(q) -> None:
    q.put(own_peak_rss_mb())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_spawned_child_reports_its_own_peak_not_the_parents():
    ballast = np.ones(600 * 2**20 // 8)  # the parent grows by 600 MB before spawning
    ballast += 1
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_report, args=(q,))
    proc.start()
    child_peak = q.get(timeout=60)
    proc.join(timeout=60)
    assert parent_peak > 600
    assert 0 < child_peak < parent_peak - 400, (child_peak, parent_peak)
    del ballast
