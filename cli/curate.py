"""Select the domain data that teaches the task: dedup, near-dedup, quality, relevance, decontamination.

Reads JSONL, JSON, CSV, Parquet, text folders or a Hugging Face dataset.

Writes train.jsonl, eval.jsonl and curate.json (kept and removed per filter, with examples).

--filter picks filters by name with default options; a recipe's curate.filters sets every option.

Examples:

  slmkit curate --input raw.jsonl --eval eval.jsonl --out curated/

  slmkit curate -i qa.csv --field prompt=question --field response=answer --out curated/

  slmkit curate -i docs/ --filter normalize --filter dedup --filter near_dedup --filter pii --out curated/

  slmkit curate --recipe demo

  slmkit curate -i pile/ --out curated/ --executor ray                       # a local Ray cluster, all CPUs

  slmkit curate -i pile/ --out curated/ --executor ray --set ray.address=auto   # the cluster `ray start` runs
"""

from __future__ import annotations

from slmkit.cli.config_flags import Flag, stage_command
from slmkit.pipelines.core.errors import SlmkitError

NAME = "curate"


def _fields(pairs: list[str]) -> dict[str, str]:
    """`--field prompt=question` → {"prompt": "question"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise SlmkitError(f"--field {pair}: expected CANONICAL=SOURCE, e.g. --field prompt=question")
        out[key.strip()] = value.strip()
    return out


def _filters(names: list[str]) -> list[dict]:
    """`--filter dedup` → the dedup filter with its default options."""
    return [{"type": name} for name in names]


# What the verb adds to the flags made from CurateConfig (one per field, e.g. --hf-dataset, --on-error).
FLAGS = {
    "input": Flag("-i"),
    "fields": Flag("--field", type=list[str], convert=_fields,
                   help="field mapping CANONICAL=SOURCE, e.g. prompt=question (canonical: prompt, response, "
                        "messages, text, system)"),
    "filters": Flag("--filter", type=list[str], convert=_filters,
                    help="filter by name, in order: normalize, dedup, near_dedup, quality, relevance, pii, "
                         "decontaminate (options: --set curate.filters=…, or a recipe)"),
    "split.eval_fraction": Flag("--eval-fraction"),
    "format": Flag(help="input format; auto: by file suffix"),
    "on_error": Flag(help="malformed input lines: skip them, or fail"),
    "num_proc": Flag(help="worker processes"),
}

command = stage_command(NAME, FLAGS, out_help="output folder", doc=__doc__)
