"""The stage contract: a pydantic config, a `run(config, ctx)` that writes only into `ctx.out`, and the
upstream stages it reads. The runner owns the run directory; a stage only sees this context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from slmkit.pipelines.core.errors import SlmkitError


@dataclass
class StageResult:
    """A finished stage as its downstream sees it: its folder, its named outputs, its metrics."""

    name: str
    dir: Path
    outputs: dict[str, str] = field(default_factory=dict)  # key -> path relative to dir
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def output(self, key: str) -> Path:
        if key not in self.outputs:
            raise SlmkitError(f"stage '{self.name}' has no output '{key}' (it has: {', '.join(self.outputs) or 'none'})")
        return self.dir / self.outputs[key]


@dataclass
class Outcome:
    """What a stage's run returns: named outputs (paths relative to ctx.out) and metrics for DONE.json."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    stage: str
    out: Path  # write outputs here; renamed to the stage folder when run returns
    state: Path  # checkpoints that survive a kill of this stage (inside out, discarded if the config changes)
    cache: Path  # run-wide cache shared by reruns (e.g. teacher responses, never asked for twice)
    upstream: dict[str, StageResult]
    fingerprint: str
    seed: int = 0
    base_model: str | None = None  # the recipe's `model`, for stages whose own config leaves it unset
    console: Console = field(default_factory=Console)

    def input(self, stage: str, key: str) -> Path:
        if stage not in self.upstream:
            raise SlmkitError(f"stage '{self.stage}' needs the output '{key}' of stage '{stage}', which is not in this run")
        return self.upstream[stage].output(key)

    def first_input(self, key: str, stages: list[str]) -> Path | None:
        """The output `key` of the nearest upstream stage among `stages` that has it, or None."""
        for name in stages:
            res = self.upstream.get(name)
            if res is not None and key in res.outputs:
                return res.output(key)
        return None


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[BaseModel]
    run: Callable[[Any, StageContext], Outcome]
    needs: tuple[str, ...]  # upstream stages this one reads, when they are in the run
    summary: str
