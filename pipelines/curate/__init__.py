"""curate: turn a messy pile of domain text into a clean, deduplicated, relevant, uncontaminated set.

    read (curate/io.py) → filters in recipe order (curate/filters/) → seeded train/eval split → train.jsonl, eval.jsonl,
    curate.json (kept/removed per filter with examples) and a Rich table.

The report's counts add up: records read = removed by each filter + train + eval (checked before writing).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Literal

from pydantic import Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.progress import LoggedProgress
from slmkit.pipelines.core.rundir import write_text
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPaths, StrictModel
from slmkit.pipelines.curate.filters import FILTERS, Env, Filter, clip, default_filters, label
from slmkit.pipelines.curate.io import eval_texts, load_records, record_text, write_jsonl

EXAMPLES_PER_FILTER = 5


class SplitConfig(StrictModel):
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of the curated records held out for eval")
    eval_size: int | None = Field(None, ge=0, description="hold out exactly this many instead (wins over the fraction)")
    seed: int | None = Field(None, description="shuffle seed; default: the recipe's seed")


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: start a local cluster for the run; 'auto': join the "
                                                  "running one (ray start); or ray://host:10001")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster this run starts (default: all)")
    batch_size: int = Field(4096, ge=16, description="records per map task")
    partitions: int | None = Field(None, ge=1, description="hash partitions of each group-by and join "
                                                           "(default: 2 per CPU of the cluster)")


class CurateConfig(StrictModel):
    input: InputPaths = Field(default_factory=list, description="raw data files or folders")
    hf_dataset: str | None = Field(None, description="a Hugging Face dataset id to read as well (needs the hub)")
    hf_split: str = Field("train", description="with hf_dataset: the split to read")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text"] = Field(
        "auto", description="input format; auto: from each file's extension")
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="canonical -> source field: {prompt, response}, {messages} or "
                                               "{text} (+ system); empty: detected from the first record")
    carry: list[str] | None = Field(None, description="source fields copied to the output; default: all others")
    prompt_template: str | None = Field(None, description="for text records: the prompt written out, with {text}")
    eval: InputPaths = Field(default_factory=list, description="eval sets to decontaminate against")
    filters: list[Filter] | None = Field(None, description="applied in this order; default: normalize, dedup, "
                                                           "near_dedup, quality (+ decontaminate with eval sets)")
    split: SplitConfig = Field(default_factory=SplitConfig)
    on_error: Literal["skip", "fail"] = Field("skip", description="an unreadable record: skip it (counted in the "
                                                                   "report) or fail naming its file and line")
    num_proc: int = Field(2, ge=1, le=64, description="worker processes for the filters (local executor)")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this process and num_proc forked workers; ray: a Ray cluster (curate.ray)")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _checks(self) -> CurateConfig:
        if self.prompt_template is not None and "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {text}")
        return self


def chain(config: CurateConfig) -> list[Any]:
    return list(config.filters) if config.filters is not None else default_filters(bool(config.eval))


def split(records: list[dict[str, Any]], cfg: SplitConfig, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the first n go to eval; train keeps the pile's original order."""
    n = cfg.eval_size if cfg.eval_size is not None else int(round(len(records) * cfg.eval_fraction))
    n = min(n, len(records) - 1)  # never leave train empty
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def filter_row(position: int, fcfg: Any, n_in: int, kept: int, removed: int, modified: int,
               notes: dict[str, Any], examples: list[dict[str, str]]) -> dict[str, Any]:
    """One filter's line of curate.json, whichever executor ran it."""
    if kept + removed != n_in:
        raise AssertionError(f"filter {label(fcfg)} lost records")  # a bug, not a user error
    if not kept:
        why = examples[0]["reason"] if examples else ""
        raise SlmkitError(f"curate: filter {position} '{label(fcfg)}' removed all {n_in} remaining records "
                          f"(first: {why}); loosen its options in curate.filters")
    return {"position": position, "filter": label(fcfg), "type": fcfg.type, "in": n_in, "kept": kept,
            "removed": removed, "modified": modified, **({"notes": notes} if notes else {}), "examples": examples}


def example(rec: dict[str, Any], why: str) -> dict[str, str]:
    return {"where": rec["_where"], "reason": why, "text": clip(record_text(rec))}


def local_chain(config: CurateConfig, records: list[dict[str, Any]], evals: list, console: Any
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The filters in this process (and its forked workers): the default executor."""
    rows: list[dict[str, Any]] = []
    with LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True) as progress:
        for position, fcfg in enumerate(chain(config), 1):
            task = progress.add_task(f"{position}. {label(fcfg)}", total=len(records))
            env = Env(num_proc=config.num_proc, eval_items=evals,
                      advance=lambda n, task=task: progress.advance(task, n), log=console.print)
            result = FILTERS[fcfg.type](fcfg, records, env)
            rows.append(filter_row(position, fcfg, len(records), len(result.kept), len(result.removed),
                                   result.modified, result.notes,
                                   [example(r, why) for r, why in result.removed[:EXAMPLES_PER_FILTER]]))
            progress.remove_task(task)
            records = result.kept
    return records, rows


def _ray_chain(config: CurateConfig, records: list[dict[str, Any]], evals: list, console: Any
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from slmkit.pipelines.curate.ray_chain import ray_chain  # imports ray: only when asked for

    return ray_chain(config, records, evals, console)


# curate.executor -> the function that runs the filter chain; both return (kept records in order, report rows)
CHAINS = {"local": local_chain, "ray": _ray_chain}


def curate(config: CurateConfig, console: Any, seed: int = 0) -> dict[str, Any]:
    """Read and filter; returns {train, eval, report}. The stage's run writes them; tests call this directly."""
    sources: list[Any] = list(config.input)
    if not sources and not config.hf_dataset:
        raise SlmkitError("curate.input: no input given (files, folders, or curate.hf_dataset)")
    records, stats = load_records(sources, fmt=config.format, fields=config.fields, carry=config.carry,
                                  on_error=config.on_error)
    if config.hf_dataset:
        more, hf_stats = load_records([config.hf_dataset], fmt="hf", fields=config.fields, carry=config.carry,
                                      on_error=config.on_error, hf_split=config.hf_split)
        records += more
        stats.read += hf_stats.read
        stats.malformed += hf_stats.malformed
        stats.examples += hf_stats.examples[:max(0, 5 - len(stats.examples))]
    if not records:
        raise SlmkitError(f"curate.input: no usable records in {', '.join(map(str, sources)) or config.hf_dataset} "
                          f"({stats.malformed} malformed)")
    evals = eval_texts(list(config.eval), config.on_error) if config.eval else []
    records, rows = CHAINS[config.executor](config, records, evals, console)
    train, held = split(records, config.split, config.split.seed if config.split.seed is not None else seed)
    report = {
        "read": stats.read, "malformed_skipped": stats.malformed, "malformed_examples": stats.examples,
        "eval_items": len(evals), "filters": rows, "train": len(train), "eval": len(held),
        "chain": [f.model_dump(mode="json") for f in chain(config)],  # every option in force, defaults included
    }
    removed = sum(r["removed"] for r in rows)
    if stats.read != removed + len(train) + len(held):
        raise AssertionError("curate: counts do not add up")
    return {"train": train, "eval": held, "report": report}


def _short(reason: str) -> str:
    """Reasons name records by full path; the table shows file names only (curate.json keeps the paths)."""
    return re.sub(r"(?:[^\s/]*/)+", "", reason)


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title="curate", show_lines=False)
    for col, just in (("#", "right"), ("filter", "left"), ("in", "right"), ("kept", "right"),
                      ("removed", "right"), ("modified", "right"), ("e.g. removed because", "left")):
        table.add_column(col, justify=just)
    table.add_row("", "read", "", str(report["read"]), str(report["malformed_skipped"]), "",
                  (clip(report["malformed_examples"][0]["reason"], 70) if report["malformed_examples"] else ""))
    for r in report["filters"]:
        table.add_row(str(r["position"]), r["filter"], str(r["in"]), str(r["kept"]), str(r["removed"]),
                      str(r["modified"]) if r["modified"] else "", clip(_short(r["examples"][0]["reason"]), 70) if r["examples"] else "")
    table.add_row("", "[bold]split[/]", "", f"train {report['train']}", f"eval {report['eval']}", "", "")
    return table


def run(config: CurateConfig, ctx: StageContext) -> Outcome:
    result = curate(config, ctx.console, seed=ctx.seed)
    outputs = {"train": "train.jsonl", "report": "curate.json"}
    write_jsonl(ctx.out / "train.jsonl", result["train"], config.prompt_template)
    if result["eval"]:
        write_jsonl(ctx.out / "eval.jsonl", result["eval"], config.prompt_template)
        outputs["eval"] = "eval.jsonl"
    report = result["report"]
    write_text(ctx.out / "curate.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    ctx.console.print(report_table(report))
    metrics = {"read": report["read"], "train": report["train"], "eval": report["eval"],
               "removed": {r["filter"]: r["removed"] for r in report["filters"]}}
    return Outcome(outputs=outputs, metrics=metrics)
