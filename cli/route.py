"""Route each request to the small model or the remote LLM: fit, calibrate and measure routers on bench's targets.

Examples:

  slmkit route --recipe demo                       # the recipe's route section, after its bench, in its run dir

  slmkit route --bench runs/demo/06_bench/bench.json --traffic recipes/data/route_traffic.jsonl \\
      --local "fine-tuned Q4_K_M" --remote "baseline (teacher)" --out route/

  slmkit route --write-reported reported.json --results runs/demo/07_route/route.json
  slmkit route --check reported.json --results runs/demo/07_route/route.json   # exit 1 on a miss

  slmkit serve --router runs/demo/07_route/router.json --port 18090   # serve the chosen router

Routers (route.routers, each `kind: rules | cascade | classifier`) are fitted on one part of the traffic and
judged on another (k-fold cross-fitting, seeded); the threshold is calibrated to `route.goal` (max_remote_share,
min_quality or min_quality_of_remote). Writes route.json, route.md, route.png, route_data.jsonl and router.json.
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.common import Flags, reported_figures_verb, run_stage_verb
from slmkit.cli.config_flags import Flag, stage_options

NAME = "route"

FLAGS = {
    "goal.max_remote_share": Flag("--max-remote-share"),
    "goal.min_quality": Flag("--min-quality"),
    "goal.min_quality_of_remote": Flag("--min-quality-of-remote"),
}


@stage_options(NAME, FLAGS, out_help="output folder for route.json, route.md and router.json")
def command(
    flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None, runs_dir: Path, force: bool,
    check: Path = typer.Option(None, "--check", help="compare --results with this reported-figures JSON; exit 1 "
                                                     "on a miss"),
    results: Path = typer.Option(None, "--results", help="an existing route.json to check or report from"),
    write_reported: Path = typer.Option(None, "--write-reported", help="write the hybrid row's figures (with "
                                                                        "default tolerances) from --results here"),
) -> None:
    from slmkit.pipelines.route import check as route_check

    if reported_figures_verb(NAME, route_check, check=check, results=results, write_reported=write_reported):
        return
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
