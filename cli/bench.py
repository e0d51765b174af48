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

import json
from pathlib import Path

import typer
from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, console, run_stage_verb

NAME = "bench"


def _overrides(sets: list[str] | None, flags: dict) -> list[str]:
    """The recipe overrides run_stage_verb makes of --set and the flags (the same list, so the same recipe)."""
    return list(sets or []) + [f"{NAME}.{k}={json.dumps(v, default=str)}" for k, v in flags.items()
                               if v not in (None, [])]


def _results_of_run(recipe: str | None, sets: list[str] | None, runs_dir: Path, out: Path | None, flags: dict) -> Path:
    """Where the run this invocation just made wrote its bench.json."""
    if not recipe:
        return Path(out) / "bench.json"
    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run

    return Run.open(load_recipe(recipe, _overrides(sets, flags)), runs_dir).stage_dir(NAME) / "bench.json"


def _refuse_code(recipe: str | None, sets: list[str] | None, flags: dict, allow_code: bool) -> None:
    """Before anything runs: the bench this invocation would run imports no code, or code was allowed."""
    from slmkit.cli.common import build_config
    from slmkit.pipelines.core.code_refs import find_code_refs, require_allowed

    if recipe:
        from slmkit.pipelines.core.recipe import load_recipe

        rec = load_recipe(recipe, _overrides(sets, flags))
        if rec.bench is not None:
            require_allowed(find_code_refs(rec.bench, NAME), allow_code or rec.allow_code, recipe)
        return
    require_allowed(find_code_refs(build_config(NAME, flags)), allow_code, "slmkit bench")


def _target_flag(value: str) -> str | dict:
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


def command(
    target: list[str] = typer.Option(None, "--target", "-t", help="gguf:PATH, hf:PATH_OR_NAME, "
                                                                   "openai:MODEL@BASE_URL (no key) or a YAML "
                                                                   "mapping '{kind: openai, …, api_key_env: VAR}'; "
                                                                   "repeatable"),
    task: Path = typer.Option(None, "--task", help="JSONL task file (prompt + answer per line)"),
    metric: str = typer.Option(None, "--metric", help="exact_match, token_f1 or json_fields"),
    max_tokens: int = typer.Option(None, "--max-tokens", help="answer length limit per request"),
    limit: int = typer.Option(None, "--limit", help="use only the first N task items"),
    lm_eval: list[str] = typer.Option(None, "--lm-eval", help="an lm-eval task (evals/lm_eval/ name or YAML) "
                                                               "to run on local targets; repeatable"),
    baseline: str = typer.Option(None, "--baseline", help="label of the target retention is measured against"),
    repeats: int = typer.Option(None, "--repeats", help="timed passes over the prompts (default 1)"),
    warmup: int = typer.Option(None, "--warmup", help="untimed warm-up requests per target (default 1)"),
    check: Path = typer.Option(None, "--check", help="compare the results with this reported-figures JSON; "
                                                     "exit 1 on a miss"),
    results: Path = typer.Option(None, "--results", help="an existing bench.json to check or report from "
                                                         "(no new run)"),
    write_reported: Path = typer.Option(None, "--write-reported", help="write reported figures (with default "
                                                                        "tolerances) from --results to this file"),
    speed_reference: str = typer.Option(None, "--speed-reference", help="with --write-reported: the target "
                                                                         "speed ratios are taken against "
                                                                         "(default: the first local target)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for bench.json and report.md"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
    allow_code: bool = typer.Option(False, "--allow-code", help="let lm-eval task YAMLs import the Python code "
                                                                "they name (!function tags)"),
) -> None:
    from slmkit.pipelines.bench import check as bench_check
    from slmkit.pipelines.core.errors import SlmkitError, StageFailed
    from slmkit.pipelines.core.rundir import write_json

    if write_reported:
        if not results:
            raise SlmkitError("slmkit bench --write-reported: give --results BENCH_JSON to report from")
        reported = bench_check.write_reported(bench_check.load(results, "--results"), speed_reference)
        write_json(write_reported, reported)
        console.print(f"wrote {write_reported} ({len(reported['targets'])} targets, speed ratios vs "
                      f"'{reported['reference']}')")
        return
    if results and not check:
        raise SlmkitError("slmkit bench: --results goes with --check or --write-reported")
    if not results:
        task_flags = {"data": task, "metric": metric, "max_tokens": max_tokens, "limit": limit}
        targets = [_target_flag(t) for t in target] if target else target
        top = {"targets": targets, "baseline": baseline, "repeats": repeats, "warmup": warmup}
        if lm_eval:
            top["lm_eval"] = {"tasks": lm_eval}
        if recipe:  # dotted keys override single fields of the recipe's task section, not the whole section
            flags = top | {f"task.{k}": v for k, v in task_flags.items()}
        else:
            flags = top | {"task": {k: v for k, v in task_flags.items() if v is not None}}
        _refuse_code(recipe, sets, flags, allow_code)
        run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
        if not check:
            return
        results = _results_of_run(recipe, sets, runs_dir, out, flags)
    reported = bench_check.load(check, "--check")
    checks = bench_check.check(bench_check.load(results, "--results"), reported, where=str(check))
    bench_check.print_checks(checks, console)
    missed = [c for c in checks if not c.ok]
    if missed:
        raise StageFailed(f"bench --check: {len(missed)} of {len(checks)} figures outside tolerance: "
                          + ", ".join(f"{c.target} {c.figure}" for c in missed))
    console.print(f"[green]✓[/] all {len(checks)} reported figures reproduced within tolerance")
