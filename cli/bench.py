"""Benchmark targets side by side: quality, first-token latency, tokens/s, memory and cost per 1M tokens.

Examples:

  slmkit bench --target gguf:model-Q4_K_M.gguf --target hf:smollm2-135m-instruct \\
      --target openai:gpt-4o-mini@https://api.openai.com/v1 --task recipes/data/tickets_eval.jsonl --out bench/

  slmkit bench --recipe demo                       # the recipe's bench section, in its run directory

  slmkit bench -t gguf:model.gguf --task tickets.jsonl --lm-eval slmkit_ticket_urgency   # + an lm-eval task

  slmkit bench --write-reported reported.json --results bench/bench.json
  slmkit bench --check reported.json --results bench/bench.json     # exit 1 if a figure is out of tolerance
  slmkit bench --recipe demo --check reported.json                  # run, then check the fresh results

An openai target sends a key only when its own `api_key_env` names the environment variable that holds it; the
openai:MODEL@BASE_URL shorthand sends none. Give a key as a mapping target (in a recipe, or as YAML here):

  slmkit bench -t '{kind: openai, model: gpt-4o-mini, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}' ...

The key is never written to bench.json, the report or the manifest. An lm-eval task YAML with `!function` tags
imports Python code: bench refuses it without --allow-code (or `allow_code: true` in the recipe).
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import Flags, build_config, console, recipe_overrides, run_stage_verb
from slmkit.cli.config_flags import Flag, stage_options

NAME = "bench"


def _target(value: str) -> str | dict:
    """A --target: a spec string, or a mapping written as YAML/JSON (`{kind: openai, …, api_key_env: VAR}`)."""
    if not value.lstrip().startswith("{"):
        return value
    import yaml

    from slmkit.pipelines.core.errors import SlmkitError

    try:
        data = yaml.safe_load(value)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        raise SlmkitError("--target: a value starting with '{' is a YAML mapping, e.g. "
                          "'{kind: openai, model: M, base_url: URL, api_key_env: VAR}', and this one is not valid")
    return data


def _targets(values: list[str]) -> list[str | dict]:
    return [_target(v) for v in values]


# What the verb adds to the flags made from BenchConfig (one per field, e.g. --baseline, --repeats): --target for
# `targets`, and flags for keys of its `task` and `lm_eval` sections. With --recipe a dotted key overrides that
# one key of the recipe's section, not the whole section.
FLAGS = {
    "targets": Flag("--target", "-t", type=list[str], convert=_targets,
                    help="gguf:PATH, hf:PATH_OR_NAME, openai:MODEL@BASE_URL (no key) or a YAML mapping "
                         "'{kind: openai, …, api_key_env: VAR}'"),
    "task.data": Flag("--task"),
    "task.metric": Flag("--metric", help="how an answer is scored"),
    "task.max_tokens": Flag("--max-tokens", help="answer length limit per request"),
    "task.limit": Flag("--limit"),
    "lm_eval.tasks": Flag("--lm-eval"),
}


def _results_of_run(recipe: str | None, sets: list[str] | None, runs_dir: Path, out: Path | None,
                    flags: Flags) -> Path:
    """Where the run this invocation just made wrote its bench.json."""
    if not recipe:
        return Path(out) / "bench.json"
    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run

    return Run.open(load_recipe(recipe, recipe_overrides(NAME, sets, flags)), runs_dir).stage_dir(NAME) / "bench.json"


def _refuse_code(recipe: str | None, sets: list[str] | None, flags: Flags, allow_code: bool) -> None:
    """Before anything runs: the bench this invocation would run imports no code, or code was allowed."""
    from slmkit.pipelines.core.code_refs import find_code_refs, require_allowed

    if recipe:
        from slmkit.pipelines.core.recipe import load_recipe

        rec = load_recipe(recipe, recipe_overrides(NAME, sets, flags))
        if rec.bench is not None:
            require_allowed(find_code_refs(rec.bench, NAME), allow_code or rec.allow_code, recipe)
        return
    require_allowed(find_code_refs(build_config(NAME, flags, sets)), allow_code, "slmkit bench")


@stage_options(NAME, FLAGS, out_help="output folder for bench.json and report.md")
def command(
    flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None, runs_dir: Path, force: bool,
    check: Path = typer.Option(None, "--check", help="compare the results with this reported-figures JSON; "
                                                     "exit 1 on a miss"),
    results: Path = typer.Option(None, "--results", help="an existing bench.json to check or report from "
                                                         "(no new run)"),
    write_reported: Path = typer.Option(None, "--write-reported", help="write reported figures (with default "
                                                                        "tolerances) from --results to this file"),
    speed_reference: str = typer.Option(None, "--speed-reference", help="with --write-reported: the target "
                                                                         "speed ratios are taken against "
                                                                         "(default: the first local target)"),
    allow_code: bool = typer.Option(False, "--allow-code", help="let lm-eval task YAMLs import the Python code "
                                                                "they name (!function tags)"),
) -> None:
    from slmkit.pipelines.bench import check as bench_check
    from slmkit.pipelines.core.errors import SlmkitError

    if write_reported:
        if not results:
            raise SlmkitError("slmkit bench --write-reported: give --results BENCH_JSON to report from")
        bench_check.write_reported_file(results, write_reported, speed_reference, console)
        return
    if results and not check:
        raise SlmkitError("slmkit bench: --results goes with --check or --write-reported")
    if not results:
        _refuse_code(recipe, sets, flags, allow_code)
        run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
        if not check:
            return
        results = _results_of_run(recipe, sets, runs_dir, out, flags)
    bench_check.run_check(check, results, console)
