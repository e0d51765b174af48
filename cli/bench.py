"""Benchmark targets side by side: quality, first-token latency, tokens/s, memory and cost per 1M tokens.

Examples:

  slmkit bench --target gguf:model-Q4_K_M.gguf --target openai:gpt-4o-mini@https://api.openai.com/v1 --out bench/

  slmkit bench --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb

NAME = "bench"


def command(
    target: list[str] = typer.Option(None, "--target", "-t", help="gguf:PATH, hf:PATH or openai:MODEL@BASE_URL"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder for bench.json and report.md"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force,
                   flags={"targets": target})
