"""Select the domain data that teaches the task: dedup, near-dedup, quality, relevance, decontamination.

Reads JSONL, JSON, CSV, Parquet, text folders or a Hugging Face dataset.

Writes train.jsonl, eval.jsonl and curate.json (kept and removed per filter, with examples).

--filter picks filters by name with default options; a recipe's curate.filters sets every option.

Examples:

  slmkit curate --input raw.jsonl --eval eval.jsonl --out curated/

  slmkit curate -i qa.csv --field prompt=question --field response=answer --out curated/

  slmkit curate -i docs/ --filter normalize --filter dedup --filter near_dedup --filter pii --out curated/

  slmkit curate --recipe demo
"""

from __future__ import annotations

from pathlib import Path

import typer
from slmkit.cli.common import ForceOpt, RecipeOpt, RunsDirOpt, SetOpt, run_stage_verb
from slmkit.pipelines.core.errors import SlmkitError

NAME = "curate"


def _fields(pairs: list[str] | None) -> dict[str, str] | None:
    """`--field prompt=question` → {"prompt": "question"}."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise SlmkitError(f"--field {pair}: expected CANONICAL=SOURCE, e.g. --field prompt=question")
        out[key.strip()] = value.strip()
    return out


def command(
    input: list[Path] = typer.Option(None, "--input", "-i", help="raw data file or folder (repeatable)"),
    eval: list[Path] = typer.Option(None, "--eval", help="eval set to decontaminate against (repeatable)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder"),
    hf_dataset: str = typer.Option(None, "--hf-dataset", help="a Hugging Face dataset id to read as well"),
    format: str = typer.Option(None, "--format", help="auto (by suffix), jsonl, json, csv, parquet or text"),
    field: list[str] = typer.Option(None, "--field", help="field mapping CANONICAL=SOURCE, e.g. prompt=question "
                                                          "(canonical: prompt, response, messages, text, system)"),
    filter: list[str] = typer.Option(None, "--filter", help="filter by name, in order (repeatable): normalize, "
                                                            "dedup, near_dedup, quality, relevance, pii, decontaminate"),
    prompt_template: str = typer.Option(None, "--prompt-template", help="prompt written for text records, with {text}"),
    eval_fraction: float = typer.Option(None, "--eval-fraction", help="share held out as eval.jsonl (default 0.1)"),
    on_error: str = typer.Option(None, "--on-error", help="malformed lines: skip (default) or fail"),
    num_proc: int = typer.Option(None, "--num-proc", help="worker processes (default 2)"),
    recipe: str = RecipeOpt,
    sets: list[str] = SetOpt,
    runs_dir: Path = RunsDirOpt,
    force: bool = ForceOpt,
) -> None:
    flags = {"input": input, "eval": eval, "hf_dataset": hf_dataset, "format": format, "fields": _fields(field),
             "filters": [{"type": name} for name in filter] if filter else None,
             "prompt_template": prompt_template, "on_error": on_error, "num_proc": num_proc,
             "split": {"eval_fraction": eval_fraction} if eval_fraction is not None else None}
    run_stage_verb(NAME, recipe=recipe, overrides=sets, runs_dir=runs_dir, out=out, force=force, flags=flags)
