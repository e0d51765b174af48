"""Show a run's stages: done / stale / pending / failed / running, with times and key metrics.

Examples:

  slmkit status demo                 # runs/demo, against the recipe it last ran with

  slmkit status runs/demo --recipe my.yaml   # what a rerun with my.yaml would redo
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from slmkit.cli.common import RunsDirOpt, console

NAME = "status"
NO_ARGS_HELP = True

STYLE = {"done": "green", "stale": "yellow", "pending": "dim", "failed": "bold red", "running": "cyan"}


def _brief(metrics: dict, limit: int = 4) -> str:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit])


def print_status(run) -> None:
    table = Table(title=f"run {run.recipe.name}  ({run.root})")
    for col in ("stage", "state", "started", "finished", "seconds", "metrics / error"):
        table.add_column(col)
    for row in run.status():
        state = row["state"]
        detail = row["error"] if state == "failed" else _brief(row["metrics"])
        table.add_row(row["stage"], f"[{STYLE[state]}]{state}[/]", row["started"] or "", row["finished"] or "",
                      "" if row["seconds"] is None else f"{row['seconds']:.1f}", detail or "")
    console.print(table)
    bench_done = any(r["stage"] == "bench" and r["state"] == "done" for r in run.status())
    if bench_done:
        _print_bench(run)


def _print_bench(run) -> None:
    """The run's headline: bench's table, shown again whenever the run is, so a resumed run still ends with it."""
    import json

    from slmkit.pipelines.bench.report import print_table
    from slmkit.pipelines.core.rundir import result_of

    res = result_of("bench", run.stage_dir("bench"))
    if res is None or "bench" not in res.outputs:
        return
    bench = json.loads(res.output("bench").read_text(encoding="utf-8"))
    console.print(f"bench: {res.output('report')}")
    print_table(bench, console)


def command(
    run_name: str = typer.Argument(..., metavar="RUN", help="run name (under --runs-dir) or run directory"),
    recipe: str = typer.Option(None, "--recipe", "-r", help="compare against this recipe instead of the last one run"),
    runs_dir: Path = RunsDirOpt,
) -> None:
    from slmkit.pipelines.core.errors import SlmkitError
    from slmkit.pipelines.core.recipe import load_recipe, validate_data
    from slmkit.pipelines.core.rundir import read_json
    from slmkit.pipelines.core.runner import Run

    root = Path(run_name) if Path(run_name).is_dir() else runs_dir / run_name
    manifest = read_json(root / "manifest.json")
    if recipe:
        rec = load_recipe(recipe)
    elif manifest:
        rec = validate_data(manifest["recipe"], f"{root}/manifest.json")
    else:
        raise SlmkitError(f"{root}: no run there (no manifest.json); runs are made by `slmkit run RECIPE`")
    print_status(Run(rec, root.resolve()))
