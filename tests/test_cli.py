"""The command line: every verb has help with examples; bad input gets one clear message, no traceback."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.cli.common import Flags, recipe_overrides
from slmkit.cli.config_flags import Flag, cli_type, stage_command, stage_options
from slmkit.pipelines.core.errors import RecipeError
from slmkit.pipelines.core.stages import STAGES
from slmkit.pipelines.core.types import StrictModel

VERBS = ["curate", "distill", "finetune", "merge", "quantize", "bench", "route", "agent", "run", "status", "validate",
         "recipes", "models", "serve"]


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
    # flags made from a config: a bad value names the flag the user typed (an alias too), or the --set key
    (["quantize", "--model", ".", "--out", "o", "--min-top1", "2"],
     "--min-top1: Input should be less than or equal to 1", 2),
    (["finetune", "--model", "smollm2-135m-instruct", "--out", "o", "--max-steps", "abc"],
     "Invalid value for '--max-steps'", 2),
    (["finetune", "--model", "smollm2-135m-instruct", "--out", "o", "--method", "dora"],
     "Invalid value for '--method'", 2),
    (["finetune", "--model", "smollm2-135m-instruct", "--out", "o", "--set", "finetune.lora.alpha=0"],
     "--set finetune.lora.alpha: Input should be greater than 0", 2),
    (["finetune", "--model", "smollm2-135m-instruct", "--out", "o", "--set", "seed=3"],
     "--set seed=3: without --recipe, a key is one of finetune's", 2),
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
    from toy_stages import write_recipe

    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run

    recipe = write_recipe(tmp_path, tiny_model_dir)
    Run.open(load_recipe(recipe), tmp_path / "runs").execute(only=["curate"])
    result = CliRunner().invoke(app, ["status", "toy", "--runs-dir", str(tmp_path / "runs")], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "done" in lines["curate"] and "pending" in lines["finetune"] and "pending" in lines["merge"]


# ------------------------------------------------------------------ stage verbs' flags, made from their configs

STAGE_VERBS = ["curate", "distill", "finetune", "merge", "quantize", "bench", "route"]


def _one_verb_app(name: str, command) -> typer.Typer:
    test_app = typer.Typer(rich_markup_mode="rich")
    test_app.command(name=name)(command)
    test_app.command(name="other")(lambda: None)  # two commands: the verb keeps its name
    return test_app


def _flat_help(test_app: typer.Typer, verb: str) -> str:
    result = CliRunner().invoke(test_app, [verb, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def standalone(monkeypatch):
    """The config a stage verb would run standalone; nothing runs."""
    import slmkit.pipelines.core.runner as runner

    seen: dict = {}

    def run_standalone(name, config, out, **_):
        seen.update(stage=name, config=config, out=out)
        return SimpleNamespace(dir=out)

    monkeypatch.setattr(runner, "run_standalone", run_standalone)
    return seen


class _Section(StrictModel):
    depth: int = Field(1, description="how deep")
    style: str = "plain"


class _Toy(StrictModel):
    name: str = Field(description="what to call it")
    count: int = Field(2, gt=0, description="how many")
    mode: Literal["a", "b"] = "a"
    loud: bool = Field(False, description="say it loudly")
    inputs: list[Path] = Field(default_factory=list, description="files to read")
    out: str | None = Field(None, description="a key whose own flag the verb uses for something else")
    mapping: dict[str, str] = Field(default_factory=dict, description="a mapping: no flag")
    section: _Section = Field(default_factory=_Section)


def _toy_command(seen: dict):
    def command(flags: Flags, out, sets, recipe, runs_dir, force) -> None:
        seen.update(flags=flags, out=out, sets=sets)

    return stage_options("toy", {"count": Flag("-c"), "section.depth": Flag("--depth")}, out_help="where it goes",
                         model=_Toy)(command)


def test_flags_are_made_from_a_config_model():
    seen: dict = {}
    toy = _one_verb_app("toy", _toy_command(seen))
    out = _flat_help(toy, "toy")
    for text in ("--name <str> what to call it [required without --recipe]", "--count -c <int> how many [default: 2]",
                 "--mode <a|b> [default: a]", "--loud --no-loud <bool> say it loudly [default: --no-loud]",
                 "--inputs <list[Path]> files to read (repeatable)", "--depth <int> how deep [default: 1]",
                 "--out -o <path> where it goes", "toy config (any key: --set toy.KEY.PATH=VALUE)",
                 "also those without a flag (out, mapping, section.*)"):
        assert text in out, text
    assert "--mapping" not in out and "--section" not in out and "--style" not in out  # sections and maps: --set

    res = CliRunner().invoke(toy, ["toy", "--name", "n", "-c", "3", "--mode", "b", "--loud", "--inputs", "x",
                                   "--inputs", "y", "--depth", "4", "-o", "dest", "-s", "toy.mapping.k=v"])
    assert res.exit_code == 0, res.output
    assert seen["flags"].values == {"name": "n", "count": 3, "mode": "b", "loud": True,
                                    "inputs": [Path("x"), Path("y")], "section.depth": 4}
    assert seen["flags"].names["count"] == "--count" and seen["flags"].names["section.depth"] == "--depth"
    assert seen["out"] == Path("dest") and seen["sets"] == ["toy.mapping.k=v"]
    res = CliRunner().invoke(toy, ["toy", "--name", "n"])
    assert res.exit_code == 0 and seen["flags"].values == {"name": "n"}  # flags not given stay unset


@pytest.mark.parametrize("args, needle", [
    (["--count", "many"], "Invalid value for '--count' / '-c'"),
    (["--mode", "c"], "Invalid value for '--mode'"),
    (["--depth", "1.5"], "Invalid value for '--depth'"),
])
def test_a_bad_flag_value_names_the_flag(args, needle):
    res = CliRunner().invoke(_one_verb_app("toy", _toy_command({})), ["toy", *args], env={"COLUMNS": "250"})
    assert res.exit_code == 2
    assert needle in " ".join(res.output.replace("│", " ").split())


def test_a_flag_table_row_must_name_a_config_key():
    def command(flags, out, sets, recipe, runs_dir, force) -> None:
        pass

    from slmkit.cli.config_flags import config_options

    with pytest.raises(ValueError, match="_Toy has no key 'section.nope'"):
        config_options(_Toy, {"section.nope": Flag("--nope")})
    # A verb's command is built at import from whatever config the stage table holds (a test may swap it): there
    # a row naming no key is left out, so the checks below, against the real configs, are what catch a typo.
    built = stage_options("toy", {"section.nope": Flag("--nope")}, out_help="o", model=_Toy)(command)
    assert "--nope" not in str(inspect.signature(built))
    with pytest.raises(ValueError, match="no option type"):
        stage_options("toy", {"mapping": Flag("--map")}, out_help="o", model=_Toy)(command)


@pytest.mark.parametrize("verb", ["curate", "distill", "finetune", "merge", "quantize", "bench"])
def test_every_row_of_a_verbs_flag_table_names_a_key_of_its_config(verb):
    from slmkit.cli.config_flags import config_options
    from slmkit.pipelines.core.stages import STAGES

    table = importlib.import_module(f"slmkit.cli.{verb}").FLAGS
    config_options(STAGES[verb].config, table)  # strict: raises naming the row's key


def test_a_config_field_added_to_a_stage_is_a_flag_without_a_cli_edit(monkeypatch, standalone, tmp_path):
    """A field added to QuantizeConfig: the quantize verb, built from the same table, has its flag."""
    from slmkit.cli import quantize
    from slmkit.pipelines.quantize import QuantizeConfig

    class Grown(QuantizeConfig):
        knob_level: int = Field(3, gt=0, description="how far the new knob turns")
        fast_path: bool = Field(True, description="take the fast path")
        tags: list[str] = Field(default_factory=list, description="labels for the report")

    monkeypatch.setitem(STAGES, "quantize", replace(STAGES["quantize"], config=Grown))
    grown = _one_verb_app("quantize", stage_command("quantize", quantize.FLAGS, out_help="o", doc=quantize.__doc__))
    out = _flat_help(grown, "quantize")
    for text in ("--knob-level <int> how far the new knob turns [default: 3]",
                 "--fast-path --no-fast-path <bool> take the fast path [default: --fast-path]",
                 "--tags <list[str]> labels for the report (repeatable)", "--qtype -q"):
        assert text in out, text

    monkeypatch.chdir(tmp_path)
    (tmp_path / "merged").mkdir()
    res = CliRunner().invoke(grown, ["quantize", "-m", "merged", "-o", "g", "--knob-level", "5", "--no-fast-path",
                                     "--tags", "a", "--tags", "b", "-q", "Q8_0"])
    assert res.exit_code == 0, res.output
    config = standalone["config"]
    assert isinstance(config, Grown)
    assert (config.knob_level, config.fast_path, config.tags, config.qtypes) == (5, False, ["a", "b"], ["Q8_0"])
    res = CliRunner().invoke(grown, ["quantize", "-m", "merged", "-o", "g", "--knob-level", "0"])
    assert isinstance(res.exception, RecipeError)
    assert "--knob-level: Input should be greater than 0" in str(res.exception)


@pytest.mark.parametrize("verb", STAGE_VERBS)
def test_every_config_field_an_option_carries_is_a_flag(verb):
    command = importlib.import_module(f"slmkit.cli.{verb}").command
    flagged = {o.path for o in command.config_options}
    for key, field in STAGES[verb].config.model_fields.items():
        if cli_type(field.annotation) is not None:
            assert (field.alias or key) in flagged, key
    out = _flat_help(app, verb)
    for option in command.config_options:
        assert option.flag in out, option.flag


@pytest.mark.parametrize("args, expected", [
    (["quantize", "-m", "merged", "-o", "g", "-q", "Q8_0", "--qtype", "Q6_K", "--min-top1", "0.5", "--no-imatrix",
      "--no-retention", "--no-modelfile", "--max-kld", "0.1"],
     {"qtypes": ["Q8_0", "Q6_K"], "min_top1_agreement": 0.5, "imatrix": False, "retention": False,
      "modelfile": False, "max_kld": 0.1}),
    (["quantize", "-b", "smollm2-135m-instruct", "-o", "g", "--imatrix", "--calib-tokens", "64"],
     {"base": "smollm2-135m-instruct", "imatrix": True, "calib_tokens": 64, "retention": True}),
    (["finetune", "-m", "smollm2-135m-instruct", "-d", "data.jsonl", "-o", "a", "--lr", "1e-4", "--lora-r", "8",
      "--no-packing", "--set", "finetune.lora.alpha=64", "--set", "finetune.lora.r=99", "--epochs", "2"],
     {"learning_rate": 1e-4, "lora.r": 8, "lora.alpha": 64, "packing": False, "epochs": 2.0}),
    (["curate", "-i", "data.jsonl", "-o", "c", "--field", "prompt=question", "--filter", "dedup",
      "--eval-fraction", "0.2", "--format", "jsonl", "--carry", "id"],
     {"fields": {"prompt": "question"}, "filters.0.type": "dedup", "split.eval_fraction": 0.2, "format": "jsonl",
      "carry": ["id"]}),
    (["distill", "-t", "openai:m@http://127.0.0.1:9/v1", "-p", "data.jsonl", "-m", "generate", "-o", "d",
      "--seed", "3", "--stop", "END"],
     {"teacher": "openai:m@http://127.0.0.1:9/v1", "mode": "generate", "seed": 3, "stop": ["END"]}),
    (["merge", "-b", "smollm2-135m-instruct", "-a", "merged", "-o", "m", "--tolerance", "0.01"],
     {"base": "smollm2-135m-instruct", "tolerance": 0.01}),
    (["bench", "-t", "openai:m@http://127.0.0.1:9/v1", "--task", "data.jsonl", "--metric", "exact_match",
      "--limit", "2", "--max-tokens", "7", "--lm-eval", "slmkit_ticket_urgency", "--repeats", "2", "-o", "b"],
     {"targets.0.kind": "openai", "task.metric": "exact_match", "task.limit": 2, "task.max_tokens": 7,
      "lm_eval.tasks": ["slmkit_ticket_urgency"], "repeats": 2}),
])
def test_aliases_and_negations_set_the_right_keys(tmp_path, monkeypatch, standalone, args, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "merged").mkdir()
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "answer": "a"}) + "\n")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert standalone["stage"] == args[0]
    for path, want in expected.items():
        got = standalone["config"]
        for part in path.split("."):
            got = got[int(part)] if part.isdigit() else getattr(got, part)
        assert got == want, path


def test_flags_override_single_keys_of_a_recipe_section():
    from slmkit.pipelines.core.recipe import load_recipe

    sets = recipe_overrides("finetune", ["finetune.max_steps=9"], Flags({"lora.r": 4, "max_steps": 5}))
    assert sets == ["finetune.max_steps=9", "finetune.lora.r=4", "finetune.max_steps=5"]  # flags last: they win
    demo, recipe = load_recipe("demo").finetune, load_recipe("demo", sets).finetune
    assert (recipe.lora.r, recipe.max_steps) == (4, 5)
    assert recipe.lora.alpha == demo.lora.alpha  # the rest of the section is the recipe's
