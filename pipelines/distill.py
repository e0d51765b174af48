"""distill: a teacher LLM writes the training data (not built yet: issue #5)."""

from __future__ import annotations

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import InputPath, StrictModel


class DistillConfig(StrictModel):
    teacher: str = Field(description="openai:MODEL@BASE_URL, hf:PATH or gguf:PATH")
    prompts: InputPath | None = Field(None, description="prompts file; default: curate's output")


def run(config: DistillConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("distill")
