"""bench: quality, latency, throughput, memory and cost beside a cloud baseline (not built yet: issue #7)."""

from __future__ import annotations

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import StrictModel


class BenchConfig(StrictModel):
    targets: list[str] = Field(default_factory=list, description="gguf:PATH, hf:PATH, openai:MODEL@BASE_URL")


def run(config: BenchConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("bench")
