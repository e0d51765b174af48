"""merge: fold the adapter into the base model in full precision (not built yet: issue #4)."""

from __future__ import annotations

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import InputPath, ModelSpec, StrictModel


class MergeConfig(StrictModel):
    base: ModelSpec | None = Field(None, description="base model; default: the recipe's `model`")
    adapter: InputPath | None = Field(None, description="adapter folder; default: finetune's output")


def run(config: MergeConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("merge")
