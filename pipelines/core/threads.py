"""How many CPU threads a model gets by default: the cores this process may run on.

`os.cpu_count()` counts the machine's cores even when the process is confined to fewer (`taskset`, a
container's cpuset, a batch scheduler's allocation); llama.cpp and torch given more threads than usable cores
spin against each other and run several times slower. `sched_getaffinity` is the set actually allowed.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
