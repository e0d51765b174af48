"""curate: select the domain data that teaches the task (not built yet: issue #6)."""

from __future__ import annotations

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import InputPaths, StrictModel


class CurateConfig(StrictModel):
    input: InputPaths = Field(default_factory=list, description="raw data files or folders")
    eval: InputPaths = Field(default_factory=list, description="eval sets to decontaminate against")


def run(config: CurateConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("curate")
