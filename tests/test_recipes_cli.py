"""The README's starting point works: `slmkit recipes demo --to DIR` copies the recipe with the data files it
reads, and the copy validates where it lies; the recipe printed alone says where its data is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).parent.parent / "recipes"
WIDE = {**os.environ, "COLUMNS": "1000"}


def slmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=WIDE)


def test_recipes_demo_to_dir_then_validate_passes(tmp_path):
    res = slmkit("recipes", "demo", "--to", "my-task", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "my-task"
    assert (dest / "demo.yaml").read_text() == (RECIPES / "demo.yaml").read_text()  # nothing rewritten
    for rel in ("data/tickets_raw.jsonl", "data/tickets_eval.jsonl", "data/teacher_shots.jsonl"):
        assert (dest / rel).read_bytes() == (RECIPES / rel).read_bytes(), rel
    assert "slmkit run my-task/demo.yaml" in res.stdout  # says how to run it
    # validated from another folder: its paths resolve against the copy's own folder, not the package's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = slmkit("validate", str(dest / "demo.yaml"), cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr
    assert "valid — run 'demo'" in ok.stdout


def test_recipes_to_dir_with_a_new_name(tmp_path):
    res = slmkit("recipes", "demo", "--to", ".", "--name", "tickets", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load((tmp_path / "tickets.yaml").read_text())
    assert data["name"] == "tickets"
    assert not (tmp_path / "demo.yaml").exists()
    ok = slmkit("validate", "tickets.yaml", cwd=tmp_path)
    assert ok.returncode == 0 and "run 'tickets'" in ok.stdout, ok.stderr


def test_recipes_to_dir_never_overwrites_unasked(tmp_path):
    assert slmkit("recipes", "demo", "--to", "d", cwd=tmp_path).returncode == 0
    (tmp_path / "d" / "demo.yaml").write_text("name: edited\n")
    again = slmkit("recipes", "demo", "--to", "d", cwd=tmp_path)
    assert again.returncode == 1 and "already there (--force overwrites)" in again.stderr
    assert (tmp_path / "d" / "demo.yaml").read_text() == "name: edited\n"
    forced = slmkit("recipes", "demo", "--to", "d", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "d" / "demo.yaml").read_text() == (RECIPES / "demo.yaml").read_text()
    bad = slmkit("recipes", "demo", "--to", "e", "--name", "no/slash", cwd=tmp_path)
    assert bad.returncode == 1 and "--name no/slash" in bad.stderr and not (tmp_path / "e").exists()


def test_printed_recipe_ends_by_saying_where_its_data_is(tmp_path):
    res = slmkit("recipes", "demo", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith((RECIPES / "demo.yaml").read_text())
    tail = res.stdout[len((RECIPES / "demo.yaml").read_text()):]
    assert all(line.startswith("#") for line in tail.strip().splitlines())  # comments only: still the same YAML
    assert str(RECIPES.resolve()) in tail and "data/tickets_raw.jsonl" in tail
    assert "slmkit recipes demo --to DIR" in tail
    assert yaml.safe_load(res.stdout) == yaml.safe_load((RECIPES / "demo.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_copies_and_validates(tmp_path, name):
    assert slmkit("recipes", name, "--to", "c", cwd=tmp_path).returncode == 0
    copy = slmkit("validate", f"c/{name}.yaml", cwd=tmp_path)
    shipped = slmkit("validate", name, cwd=tmp_path)
    # the copy is exactly as valid as the shipped recipe (whatever else validate checks, e.g. the environment)
    assert copy.returncode == shipped.returncode, copy.stderr
    assert "path does not exist" not in copy.stderr


def test_readme_starting_point_uses_to(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "slmkit recipes demo > my.yaml` to start" not in readme
    line = next(ln for ln in readme.splitlines() if ln.startswith("slmkit recipes demo --to"))
    args = line.split("#")[0].split()[1:]
    res = slmkit(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert slmkit("validate", "my.yaml", cwd=tmp_path).returncode == 0  # the README's next line works


def test_a_workflow_named_by_a_recipe_travels_with_its_tasks(tmp_path):
    """agent-demo names data/agent_support.yaml, which names its tasks file relative to itself: both copied,
    and the copied workflow loads (tools, tasks and controller checked) from the copy."""
    from slmkit.pipelines.agent.workflow import load_workflow

    assert slmkit("recipes", "agent-demo", "--to", "c", cwd=tmp_path).returncode == 0
    copied = tmp_path / "c" / "data"
    assert (copied / "agent_tasks.jsonl").read_bytes() == (RECIPES / "data" / "agent_tasks.jsonl").read_bytes()
    assert load_workflow(copied / "agent_support.yaml").tasks
