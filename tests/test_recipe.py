"""Recipe validation: every problem at once, with key path and line; overrides; shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.pipelines.core.errors import RecipeError
from slmkit.pipelines.core.recipe import (
    apply_overrides,
    find_recipe,
    load_recipe,
    parse_override,
    shipped,
    stages_in,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def problems(path: Path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_every_problem_reported_with_key_and_line(tmp_path, toy_stages):
    path = write(tmp_path, """\
name: ok
model: no-such-model
seed: abc
colour: blue
curate:
  text: missing.txt
  upper: maybe
finetune:
  steps: 0
  stepz: 3
""")
    found = problems(path)
    assert len(found) == 7, found
    expected = [
        ("model: unknown model 'no-such-model'", "(line 2)"),
        ("seed: ", "(line 3)"),
        ("colour: unknown key", "(line 4)"),
        ("curate.text: path does not exist", "(line 6)"),
        ("curate.upper: ", "(line 7)"),
        ("finetune.steps: ", "(line 9)"),
    ]
    joined = "\n".join(found)
    for start, line in expected:
        assert any(p.startswith(start) and p.endswith(line) for p in found), (start, joined)
    assert "finetune.stepz: unknown key (line 10)" in found
    # reported in the order they stand in the file
    lines = [int(p.rsplit("line ", 1)[1].rstrip(")")) for p in found]
    assert lines == sorted(lines)


def test_missing_required_key_and_bad_name(tmp_path, toy_stages):
    found = problems(write(tmp_path, "name: 'bad name!'\ncurate: {}\n"))
    assert any(p.startswith("name: ") and "(line 1)" in p for p in found)
    assert any(p.startswith("curate.text: required key is missing") for p in found)


@pytest.mark.parametrize("text, needle", [
    ("name: x\n  bad: [\n", "line 2: not valid YAML"),
    ("", "the recipe is empty"),
    ("- a\n- b\n", "a recipe is a YAML mapping"),
])
def test_malformed_files(tmp_path, text, needle):
    found = problems(write(tmp_path, text))
    assert len(found) == 1 and needle in found[0]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_relative_paths_resolve_against_recipe_folder(tmp_path, toy_stages, tiny_model_dir, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.txt").write_text("hello")
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(f"name: x\nmodel: {tiny_model_dir}\ncurate: {{text: data.txt}}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere on purpose
    recipe = load_recipe(path)
    assert recipe.curate.text == (tmp_path / "sub" / "data.txt").resolve()
    assert stages_in(recipe) == ["curate"]


def test_overrides_apply_and_are_validated(tmp_path, toy_stages, tiny_model_dir):
    (tmp_path / "data.txt").write_text("x")
    path = write(tmp_path, f"name: x\nmodel: {tiny_model_dir}\ncurate: {{text: data.txt}}\nfinetune: {{steps: 3}}\n")
    recipe = load_recipe(path, ["finetune.steps=7", "curate.upper=true", "merge.note=hi there"])
    assert recipe.finetune.steps == 7 and recipe.curate.upper is True and recipe.merge.note == "hi there"
    found = problems(path, ["finetune.steps=-1", "finetune.nope=1"])
    assert "finetune.nope: unknown key (command-line override)" in found
    assert any(p.startswith("finetune.steps:") and "(command-line override)" in p for p in found)


def test_override_parsing():
    assert parse_override("a.b.c=16") == (["a", "b", "c"], 16)
    assert parse_override("a.list=[1, 2]") == (["a", "list"], [1, 2])
    assert parse_override("a=") == (["a"], "")
    data = apply_overrides({"a": {"xs": [1, 2]}}, ["a.xs.1=5", "a.xs.2=6", "b.c=d"])
    assert data == {"a": {"xs": [1, 5, 6]}, "b": {"c": "d"}}
    for bad in ("novalue", "a..b=1", "=3"):
        with pytest.raises(RecipeError):
            parse_override(bad)
    with pytest.raises(RecipeError, match="past the end"):
        apply_overrides({"a": [1]}, ["a.5=2"])


def test_shipped_recipes_validate():
    """Every recipe that ships validates against the real stage configs."""
    names = shipped()
    assert "demo" in names
    for name in names:
        recipe = load_recipe(find_recipe(name))
        assert recipe.name and stages_in(recipe)
