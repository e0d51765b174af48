"""A recipe that names Python code to import says so in `validate`, and runs it only when allowed.

The code in these tests is a `utils.py` beside an lm-eval task YAML whose `process_docs: !function
utils.process_docs` makes lm-eval import it; importing it writes a marker file, so a test sees whether it ran.
The recipes have only a bench section (an endpoint target, no model): the refusal comes before any stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.pipelines.core.code_refs import CodeNotAllowed, find_code_refs, require_allowed, task_file_code
from slmkit.pipelines.core.recipe import load_recipe

TASK = """task: slmkit_test_codey
dataset_path: json
dataset_kwargs:
  data_files:
    test: eval.jsonl
test_split: test
process_docs: !function utils.process_docs
output_type: multiple_choice
doc_to_text: "{{prompt}}"
doc_to_choice: ["ok", "no"]
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
"""


@pytest.fixture
def codey(tmp_path: Path) -> Path:
    """A folder with the task YAML, its utils.py, a task file and a bench-only recipe that names the YAML."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "utils.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n"
                                       "def process_docs(ds):\n    return ds\n")
    (tmp_path / "task.yaml").write_text(TASK)
    (tmp_path / "eval.jsonl").write_text('{"id": "a", "prompt": "hi", "answer": "ok"}\n')
    (tmp_path / "r.yaml").write_text(
        "name: codey\n"
        "bench:\n"
        "  task: {data: eval.jsonl, metric: exact_match, max_tokens: 4}\n"
        "  warmup: 0\n"
        "  targets: [{kind: openai, model: m, base_url: 'http://127.0.0.1:9/v1', timeout: 5}]\n"
        "  lm_eval: {tasks: [task.yaml]}\n")  # relative: read against the recipe's folder
    return tmp_path


def _slmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_validate_lists_the_code_a_task_yaml_imports(codey, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")  # validated from another folder: paths follow the recipe
    res = _slmkit("validate", str(codey / "r.yaml"), cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert "imports Python code" in res.stdout and "--allow-code" in res.stdout
    assert "bench.lm_eval.tasks[0]" in res.stdout and "!function utils.process_docs" in res.stdout
    assert str(codey / "utils.py") in res.stdout
    assert not (codey / "IMPORTED").exists()  # validating imported nothing


def test_run_refuses_code_without_allow_code(codey):
    runs = codey / "runs"
    res = _slmkit("run", "r.yaml", "--runs-dir", str(runs), cwd=codey)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "would import Python code" in res.stderr and "--allow-code" in res.stderr
    assert "utils.py" in res.stderr and "Traceback" not in res.stderr
    assert not (codey / "IMPORTED").exists() and not runs.exists()  # no stage started, no run directory


def test_bench_refuses_code_without_allow_code(codey):
    res = _slmkit("bench", "--recipe", "r.yaml", "--runs-dir", str(codey / "runs"), cwd=codey)
    assert res.returncode == 2 and "would import Python code" in res.stderr, res.stdout + res.stderr
    res = _slmkit("bench", "-t", "openai:m@http://127.0.0.1:9/v1", "--task", "eval.jsonl", "--lm-eval", "task.yaml",
                  "--out", "out", cwd=codey)
    assert res.returncode == 2 and "would import Python code" in res.stderr, res.stdout + res.stderr
    assert not (codey / "IMPORTED").exists() and not (codey / "out").exists() and not (codey / "runs").exists()


def test_allowed_code_gets_past_the_check(codey):
    recipe = load_recipe(codey / "r.yaml")
    refs = find_code_refs(recipe)
    assert [r.where for r in refs] == ["bench.lm_eval.tasks[0]"]
    with pytest.raises(CodeNotAllowed):
        require_allowed(refs, recipe.allow_code)
    require_allowed(refs, True)  # --allow-code
    allowed = load_recipe(codey / "r.yaml", ["allow_code=true"])
    require_allowed(find_code_refs(allowed), allowed.allow_code)  # or the recipe says so
    # With the flag the run goes on into the stage (the endpoint is not there, so bench itself fails).
    res = _slmkit("run", "r.yaml", "--runs-dir", str(codey / "runs"), "--allow-code", cwd=codey)
    assert "would import Python code" not in res.stderr and (codey / "runs" / "codey").is_dir(), res.stderr


def test_scan_follows_includes_and_other_code_forms(tmp_path):
    (tmp_path / "base.yaml").write_text("process_results: !function metrics.score\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\ntask: t\n")
    (tmp_path / "pyname.yaml").write_text("task: t\nprocess_docs: !!python/name:os.system\n")
    (tmp_path / "script.yaml").write_text("task: t\ndataset_path: ./loader.py\n"
                                          "dataset_kwargs: {trust_remote_code: true}\n")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    (tmp_path / "plain.yaml").write_text(TASK.replace("process_docs: !function utils.process_docs\n", ""))
    whats = {name: [w for _, w in task_file_code(tmp_path / name)] for name in
             ("child.yaml", "pyname.yaml", "script.yaml", "broken.yaml", "plain.yaml")}
    assert len(whats["child.yaml"]) == 1 and "!function metrics.score" in whats["child.yaml"][0]
    assert "the module metrics" in whats["child.yaml"][0]  # no metrics.py beside it: an importable module
    assert any("python/name:os.system" in w for w in whats["pyname.yaml"])
    assert len(whats["script.yaml"]) == 2
    assert whats["broken.yaml"] and "cannot be read" in whats["broken.yaml"][0]
    assert whats["plain.yaml"] == []


def test_shipped_recipes_and_tasks_import_no_code():
    for name in ("demo", "demo-cloud"):
        assert find_code_refs(load_recipe(name)) == [], name
