"""finetune: LoRA or QLoRA on the domain data (not built yet: issue #4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import InputPath, ModelSpec, StrictModel


class FinetuneConfig(StrictModel):
    model: ModelSpec | None = Field(None, description="base model; default: the recipe's `model`")
    data: InputPath | None = Field(None, description="training JSONL; default: distill's or curate's output")
    method: Literal["lora", "qlora"] = "lora"
    max_steps: int = Field(100, gt=0)
    learning_rate: float = Field(2e-4, gt=0)


def run(config: FinetuneConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("finetune")
