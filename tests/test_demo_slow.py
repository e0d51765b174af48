"""The demo recipe end to end on the real models, shrunk (few prompts, a few steps, a few bench items) so that
it checks the wiring of every stage in minutes: `make test-slow`. `make reproduce` runs it at full size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHRINK = ["distill.limit=12", "finetune.max_steps=3", "finetune.batch_size=4", "finetune.save_every=2",
          "quantize.calib_tokens=512", "quantize.eval_tokens=256", "bench.task.limit=4",
          "bench.task.max_tokens=48", "bench.warmup=0"]
# every stage of recipes/demo.yaml, in order (the test checks the run made exactly these)
STAGES = ("01_curate", "02_distill", "03_finetune", "04_merge", "05_quantize", "06_bench", "07_route", "08_agent")


def slmkit(*args: str, runs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "slmkit", *args, "--runs-dir", str(runs)], capture_output=True,
                          text=True, timeout=1800, env=env)


def test_demo_end_to_end_then_resumed_then_checked(tmp_path):
    runs = tmp_path / "runs"
    first = slmkit("run", "demo", *SHRINK, runs=runs)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = runs / "demo"
    assert sorted(p.name for p in root.iterdir() if p.name[:2].isdigit()) == list(STAGES)
    for folder in STAGES:
        assert (root / folder / "DONE.json").is_file(), folder

    bench = json.loads((root / "06_bench/bench.json").read_text())
    targets = {t["label"]: t for t in bench["targets"]}
    assert list(targets) == ["base student F16", "fine-tuned F16", "fine-tuned Q4_K_M", "baseline (teacher)"]
    for t in targets.values():
        assert t["status"] == "ok" and 0 <= t["quality"] <= 1
        assert 0 < t["ttft_ms_p50"] <= t["ttft_ms_p95"]
    assert "local stand-in for a cloud API" in targets["baseline (teacher)"]["note"]
    assert targets["fine-tuned Q4_K_M"]["size_mb"] < 0.5 * targets["fine-tuned F16"]["size_mb"]
    # The student learns from the teacher's answers, never from the shots: records hold the prompt alone.
    row = json.loads((root / "02_distill/train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]

    again = slmkit("run", "demo", *SHRINK, runs=runs)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(STAGES) and "fine-tuned Q4_K_M" in again.stdout  # resumed; table

    reported = tmp_path / "reported.json"
    results = root / "06_bench/bench.json"
    wrote = subprocess.run([sys.executable, "-m", "slmkit", "bench", "--write-reported", str(reported),
                            "--results", str(results)], capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    ok = subprocess.run([sys.executable, "-m", "slmkit", "bench", "--check", str(reported), "--results",
                         str(results)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
