"""Domain tasks for bench: a JSONL of prompts with reference answers, and how to score them.

The task's data is a file the recipe names, or, when unset, the curate stage's held-out `eval` split (the same
prompts the student never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slmkit.evals.metrics import METRICS
from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.types import InputPath, StrictModel

MetricName = Literal["exact_match", "token_f1", "json_fields"]
assert set(MetricName.__args__) == set(METRICS)  # the config's choices and the scorer table agree


class TaskConfig(StrictModel):
    data: InputPath | None = Field(None, description="JSONL with a prompt and a reference answer per line "
                                                     "(default: curate's eval output)")
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    id_field: str = "id"
    metric: MetricName = Field("json_fields", description="how an answer is scored against its reference")
    max_tokens: int = Field(128, gt=0, le=8192, description="longest answer, in tokens")
    limit: int | None = Field(None, gt=0, description="use only the first N items")
    stop: list[str] = Field(default_factory=list, description="stop strings (e.g. a blank line for base models)")


@dataclass
class Item:
    id: str
    prompt: str
    answer: Any


def load_items(path: Path, cfg: TaskConfig) -> list[Item]:
    """Read the task's items; a bad line is an error naming the file and line, never skipped silently."""
    items: list[Item] = []
    for where, lineno, rec in jsonl.records(path):
        for setting, key in (("prompt_field", cfg.prompt_field), ("answer_field", cfg.answer_field)):
            if key not in rec:
                raise SlmkitError(f"{where}: no '{key}' field (bench.task.{setting})")
        if not isinstance(rec[cfg.prompt_field], str):
            raise SlmkitError(f"{where}: '{cfg.prompt_field}' is not a string")
        items.append(Item(str(rec.get(cfg.id_field, lineno)), rec[cfg.prompt_field], rec[cfg.answer_field]))
        if cfg.limit and len(items) >= cfg.limit:
            break
    if not items:
        raise SlmkitError(f"{path}: the task has no items")
    return items


def load_few_shot(path: Path) -> list[dict]:
    """Few-shot pairs as alternating user/assistant turns (the rules are jsonl.few_shot_pairs', shared with
    distill)."""
    return [{"role": role, "content": text} for pair in jsonl.few_shot_pairs(path)
            for role, text in zip(("user", "assistant"), pair, strict=True)]
