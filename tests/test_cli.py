"""The command line: every verb has help with examples; bad input gets one clear message, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from slmkit.cli.app import app
from typer.testing import CliRunner

VERBS = ["curate", "distill", "finetune", "merge", "quantize", "bench", "run", "status", "validate", "recipes",
         "models", "serve"]


def slmkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_root_help_lists_every_verb():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for verb in VERBS:
        assert f" {verb} " in result.output, verb


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_examples(verb):
    result = CliRunner().invoke(app, [verb, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output
    assert "Usage: slmkit " + verb in " ".join(result.output.split())


@pytest.mark.parametrize("args, needle, code", [
    (["validate", "no-such-recipe.yaml"], "no such recipe file", 2),
    (["run", "no-such-recipe.yaml"], "no such recipe file", 2),
    (["status", "no-such-run"], "no run there", 1),
    (["models", "prepare", "no-such-model"], "unknown model 'no-such-model'", 1),
    (["recipes", "nope"], "no shipped recipe 'nope'", 1),
    (["finetune", "--model", "smollm2-135m-instruct", "--data", "missing.jsonl", "--out", "o"],
     "--data: path does not exist", 2),
    (["finetune", "--model", "nonsense-model", "--out", "o"], "--model: unknown model 'nonsense-model'", 2),
    (["run", "demo", "--only", "nosuchstage"], "no such stage", 1),
])
def test_bad_input_gets_one_clear_message(tmp_path, args, needle, code):
    result = slmkit(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert needle in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_serve_help_lists_its_options_and_examples():
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for option in ("--port", "-p", "--host", "--delay-ms", "--n-ctx", "--threads", "--prompt-cache", "--api-key-env",
                   "--max-body-bytes", "GGUF file to serve", "[default: 18080]", "[default: 127.0.0.1]"):
        assert option in out, option
    for example in ("slmkit serve model.gguf --port 18080",
                    "slmkit serve model.gguf --host 0.0.0.0 --api-key-env SLMKIT_SERVE_KEY"):
        assert example in out, example


@pytest.mark.parametrize("args, needle, code", [
    (["missing.gguf"], "no GGUF file at missing.gguf", 1),
    (["notes.gguf"], "notes.gguf is not a GGUF file", 1),
    (["."], "is not a file (give the .gguf file itself)", 1),
    # fake.gguf passes the magic check and is never loaded: the address is checked (and fails) first. 192.0.2.1
    # is a documentation address (TEST-NET-1) that no machine has, so nothing is bound.
    (["fake.gguf", "--host", "192.0.2.1"], "cannot listen on 192.0.2.1:18080", 1),
    (["fake.gguf", "--port", "0"], "Invalid value for '--port'", 2),
])
def test_serve_bad_input_exits_with_one_clear_message(tmp_path, args, needle, code):
    (tmp_path / "notes.gguf").write_text("not a model\n")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + bytes(64))
    result = slmkit("serve", *args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert needle in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "serving" not in result.stdout  # it never reached the point of serving


def test_validate_lists_all_problems_and_exits_nonzero(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nmodel: nope\nfinetune:\n  method: dora\n  max_stepz: 3\n")
    result = slmkit("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert "3 problem(s)" in err
    for needle in ("model: unknown model 'nope'", "(line 2)", "finetune.method:", "(line 4)",
                   "finetune.max_stepz: unknown key (line 5)"):
        assert needle in err


def test_validate_shipped_demo_and_recipes_listing(tmp_path):
    result = slmkit("validate", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listing = slmkit("recipes", cwd=tmp_path)
    assert listing.returncode == 0 and "demo" in listing.stdout
    shown = slmkit("recipes", "demo", cwd=tmp_path)
    assert shown.stdout.startswith("# slmkit run demo")


def test_models_lists_known(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["models"], terminal_width=250)
    assert result.exit_code == 0
    for name in ("smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2"):
        assert name in result.output


def test_status_table_of_a_run(tmp_path, toy_stages, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run
    from toy_stages import write_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir)
    Run.open(load_recipe(recipe), tmp_path / "runs").execute(only=["curate"])
    result = CliRunner().invoke(app, ["status", "toy", "--runs-dir", str(tmp_path / "runs")], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "done" in lines["curate"] and "pending" in lines["finetune"] and "pending" in lines["merge"]
