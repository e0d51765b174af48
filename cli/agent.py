"""Run a tool workflow two ways on each target: the model holds the control flow (lm), or the workflow's
controller does and asks the model only for schema-constrained steps (code). Scores task success by final
state, pass^k, call validity and BFCL's error categories, calls, tokens, latency and cost.

Writes agent.json, agent.md, agent.png and runs.jsonl (every run: calls, transcript, final-state diff).

Examples:

  slmkit agent recipes/data/agent_support.yaml --target gguf:model-Q4_K_M.gguf --out runs/agent

  slmkit agent recipes/data/agent_support.yaml -t gguf:a.gguf \\
      -t '{kind: openai, serve: gemma3-270m, label: baseline}' --k 3 --limit 6

  slmkit agent --bfcl simple --bfcl multiple --bfcl irrelevance --bfcl-limit 20 -t gguf:a.gguf --mode lm

  slmkit agent --recipe demo                      # the recipe's agent section, in its run directory

  slmkit agent --write-reported reported.json --results runs/demo/08_agent/agent.json
  slmkit agent --check reported.json --results runs/demo/08_agent/agent.json   # exit 1 on a miss

BFCL's items are read from the bfcl-eval package's data files (pip install --no-deps bfcl-eval; make setup).
Without --out, results go to runs/agent/<workflow name>.
"""

from __future__ import annotations

from pathlib import Path

import typer

from slmkit.cli.bench import _targets
from slmkit.cli.common import Flags, reported_figures_verb, run_stage_verb
from slmkit.cli.config_flags import Flag, stage_options

NAME = "agent"

# What the verb adds to the flags made from AgentConfig (one per field, e.g. --k, --max-steps, --limit).
FLAGS = {
    "targets": Flag("--target", "-t", type=list[str], convert=_targets,
                    help="gguf:PATH, hf:PATH_OR_NAME, openai:MODEL@BASE_URL (no key) or a YAML mapping "
                         "'{kind: openai, …, api_key_env: VAR}' (as bench's)"),
    # typer takes no list of Literal: the words pass as text, and the config's Literal checks them.
    "modes": Flag("--mode", "-m", type=list[str], help="lm or code; repeat for both (default: both)"),
    "bfcl.subsets": Flag("--bfcl", type=list[str], help="a BFCL subset to run too (simple, multiple, multi_turn, "
                                                         "irrelevance); repeat"),
    "bfcl.limit": Flag("--bfcl-limit", help="the first N items of each BFCL subset"),
}


@stage_options(NAME, FLAGS, out_help="output folder for agent.json, agent.md, agent.png and runs.jsonl")
def command(
    flags: Flags, out: Path | None, sets: list[str] | None, recipe: str | None, runs_dir: Path, force: bool,
    workflow_file: Path = typer.Argument(None, metavar="WORKFLOW", help="workflow YAML (tools, tasks, controller)"),
    check: Path = typer.Option(None, "--check", help="compare --results with this reported-figures JSON; exit 1 "
                                                     "on a miss"),
    results: Path = typer.Option(None, "--results", help="an existing agent.json to check or report from"),
    write_reported: Path = typer.Option(None, "--write-reported", help="write every row's rates (with default "
                                                                        "tolerances) from --results here"),
) -> None:
    from slmkit.pipelines.agent import check as agent_check

    if reported_figures_verb(NAME, agent_check, check=check, results=results, write_reported=write_reported):
        return
    if workflow_file is not None:
        flags = Flags({**flags.values, "workflow": str(workflow_file)}, flags.names)
    if out is None and not recipe:
        given = flags.values.get("workflow")
        out = Path("runs") / "agent" / (Path(given).stem if given else "bfcl")
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
