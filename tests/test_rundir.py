"""The run directory and resume contract: fingerprints, skips, reruns with downstream, kills, status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.recipe import load_recipe
from slmkit.pipelines.core.runner import Run, run_standalone

TESTS = Path(__file__).parent


def states(run: Run) -> dict[str, str]:
    return {row["stage"]: row["state"] for row in run.status()}


def make_run(tmp_path, model, overrides=None, **extra) -> Run:
    from toy_stages import write_recipe

    recipe = load_recipe(write_recipe(tmp_path, model, **extra), overrides)
    return Run.open(recipe, tmp_path / "runs")


def test_first_run_then_everything_skipped(tmp_path, toy_stages, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    assert states(run) == {"curate": "pending", "finetune": "pending", "merge": "pending"}
    run.execute()
    assert toy_stages.CALLS == ["curate", "finetune", "merge"]
    assert states(run) == {"curate": "done", "finetune": "done", "merge": "done"}
    for name, folder in (("curate", "01_curate"), ("finetune", "03_finetune"), ("merge", "04_merge")):
        done = json.loads((run.root / folder / "DONE.json").read_text())
        assert done["stage"] == name and len(done["fingerprint"]) == 64
        assert not (run.root / f"{folder}.partial").exists()
    manifest = json.loads((run.root / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "toy" and manifest["versions"]["torch"] and manifest["host"]["cpus"]
    toy_stages.CALLS.clear()
    Run.open(run.recipe, tmp_path / "runs").execute()
    assert toy_stages.CALLS == []


def test_changed_stage_reruns_with_its_downstream_only(tmp_path, toy_stages, tiny_model_dir):
    make_run(tmp_path, tiny_model_dir).execute()
    toy_stages.CALLS.clear()
    run = make_run(tmp_path, tiny_model_dir, ["finetune.steps=4"])
    assert states(run) == {"curate": "done", "finetune": "stale", "merge": "stale"}
    run.execute()
    assert toy_stages.CALLS == ["finetune", "merge"]
    toy_stages.CALLS.clear()
    make_run(tmp_path, tiny_model_dir, ["finetune.steps=4", "merge.note=x"]).execute()
    assert toy_stages.CALLS == ["merge"]


def test_changed_input_file_reruns(tmp_path, toy_stages, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    run.execute()
    (tmp_path / "data.txt").write_text("different content\n")
    toy_stages.CALLS.clear()
    run = Run.open(load_recipe(tmp_path / "toy.yaml"), tmp_path / "runs")
    assert states(run)["curate"] == "stale"
    run.execute()
    assert toy_stages.CALLS == ["curate", "finetune", "merge"]


def test_changed_model_weights_rerun(tmp_path, toy_stages, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    make_run(tmp_path, model).execute()
    from helpers import tiny_llama

    tiny_llama(model, seed=1)  # same shape, other weights
    toy_stages.CALLS.clear()
    make_run(tmp_path, model).execute()
    assert "finetune" in toy_stages.CALLS


def test_force_and_from_and_only(tmp_path, toy_stages, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    run.execute()
    toy_stages.CALLS.clear()
    run.execute(force=["curate"])
    # a forced upstream makes a new attempt, so its downstream is stale and reruns too
    assert toy_stages.CALLS == ["curate", "finetune", "merge"]
    toy_stages.CALLS.clear()
    run.execute(start="finetune")
    assert toy_stages.CALLS == ["finetune", "merge"]
    toy_stages.CALLS.clear()
    run.execute(only=["curate"], force=["curate"])
    assert toy_stages.CALLS == ["curate"]
    assert states(run) == {"curate": "done", "finetune": "stale", "merge": "stale"}
    with pytest.raises(SlmkitError, match="needs curate"):
        make_run(tmp_path, tiny_model_dir, ["curate.upper=true"]).execute(only=["finetune"])
    with pytest.raises(SlmkitError, match="no such stage"):
        run.execute(only=["nonsense"])
    with pytest.raises(SlmkitError, match="no 'quantize' section"):
        run.execute(only=["quantize"])


def test_failed_stage_leaves_no_done_and_reports(tmp_path, toy_stages, tiny_model_dir, monkeypatch):
    run = make_run(tmp_path, tiny_model_dir)

    def boom(cfg, ctx):
        (ctx.out / "half.txt").write_text("half")
        raise RuntimeError("disk on fire")

    from dataclasses import replace

    from slmkit.pipelines.core.stages import STAGES

    monkeypatch.setitem(STAGES, "merge", replace(STAGES["merge"], run=boom))
    with pytest.raises(RuntimeError):
        run.execute()
    assert not (run.root / "04_merge").exists()
    assert not (run.root / "04_merge.partial" / "DONE.json").exists()
    row = {r["stage"]: r for r in run.status()}["merge"]
    assert row["state"] == "failed" and "disk on fire" in row["error"]


def test_killed_stage_leaves_no_done_and_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    """A real SIGKILL in the middle of a stage: no DONE marker, status says failed, and the rerun resumes from
    the stage's last checkpoint without redoing the stages before it."""
    from toy_stages import write_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir, finetune={"steps": 5})
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(TESTS / "toy_stages.py"), str(recipe), str(runs)]
    killed = subprocess.run(cmd + ["finetune.die_at=2"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    root = runs / "toy"
    assert (root / "01_curate" / "DONE.json").exists()
    assert not (root / "03_finetune").exists()
    assert not (root / "03_finetune.partial" / "DONE.json").exists()
    assert (root / "03_finetune.partial" / "partial-output.txt").exists()

    import toy_stages as toys

    from slmkit.pipelines.core.stages import STAGES

    originals = toys.install(STAGES)
    try:
        run = Run.open(load_recipe(recipe, ["finetune.die_at=2"]), runs)
        row = {r["stage"]: r for r in run.status()}["finetune"]
        assert row["state"] == "failed" and "interrupted" in row["error"]
    finally:
        STAGES.update(originals)

    # die_at is part of the config, so the resumed run keeps it: it is past step 2 already and does not die again
    resumed = subprocess.run(cmd + ["finetune.die_at=2"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "CALLS finetune,merge" in resumed.stdout  # curate was not redone
    result = json.loads((root / "03_finetune" / "result.json").read_text())
    assert result["resumed_from"] == 2 and result["step"] == 5 and len(result["losses"]) == 5
    assert json.loads((root / "03_finetune" / "DONE.json").read_text())["metrics"]["resumed_from"] == 2


def test_changed_config_discards_stale_checkpoints(tmp_path, tiny_model_dir):
    from toy_stages import write_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir, finetune={"steps": 5})
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(TESTS / "toy_stages.py"), str(recipe), str(runs)]
    assert subprocess.run(cmd + ["finetune.die_at=2"], capture_output=True, timeout=300).returncode == -9
    ok = subprocess.run(cmd + ["finetune.steps=4"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    result = json.loads((runs / "toy" / "03_finetune" / "result.json").read_text())
    assert result["resumed_from"] is None and result["step"] == 4


def test_standalone_stage_uses_same_protocol(tmp_path, toy_stages):
    (tmp_path / "in.txt").write_text("abc")
    cfg = toy_stages.ToyCurate(text=tmp_path / "in.txt")
    out = tmp_path / "out"
    res = run_standalone("curate", cfg, out)
    assert (out / "train.txt").read_text() == "abc" and (out / "DONE.json").exists()
    assert res.output("train") == out / "train.txt"
    run_standalone("curate", cfg, out)
    assert toy_stages.CALLS == ["curate"]  # second call skipped: complete for this config
    run_standalone("curate", cfg, out, force=True)
    assert toy_stages.CALLS == ["curate", "curate"]
