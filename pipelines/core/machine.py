"""What a result was measured on, recorded beside it (bench.json, route.json, agent.json).

`isa` is the kind of vector unit the CPU has, the one fact about a machine that changes figures which should not
depend on it: llama.cpp's kernels and torch's (oneDNN) are chosen by instruction set and sum in a different order
with 512-bit registers than with 256-bit ones, so a student fine-tuned and scored on an AVX-512 machine differs
in its last bits from one made on an AVX2-only machine, and items that sit at a near tie between two answers
fall the other way. Over the demo's 40 tickets that moved the Q4_K_M student's urgency accuracy from 0.575
(AVX2-only AMD EPYC) to 0.375 (AVX-512 Intel Xeon), clean clones of code that makes the same files. Reported
figures are therefore kept per kind (core/reported.py); two machines of one kind reproduced each other's
quality and lm-eval figures to the last digit (CI's and a development machine's, 2026-12-07).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from slmkit.pipelines.core.defaults import usable_cores

# Widest first: the first flag the CPU has names its kind. x86 only; other architectures are named by
# platform.machine() (arm64, aarch64), whose kernels do not branch this way on these machines.
X86_KINDS = (("avx512f", "avx512"), ("avx2", "avx2"))


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (Linux); (None, empty) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def isa() -> str:
    """This machine's kind of vector unit: 'avx512', 'avx2', or the architecture's name."""
    arch = platform.machine().lower()
    if arch not in ("x86_64", "amd64"):
        return arch or "unknown"
    _, flags = _cpuinfo()
    return next((kind for flag, kind in X86_KINDS if flag in flags), "x86_64")


def describe() -> dict:
    """The `machine` block of a result file."""
    model, _ = _cpuinfo()
    return {"cpus": os.cpu_count(), "usable_cpus": usable_cores(), "cpu": model or platform.processor() or None,
            "isa": isa(), "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version()}
