"""quantize: export to GGUF and quantise, with a measured quality-retention check (not built yet: issue #3)."""

from __future__ import annotations

from pydantic import Field

from slmkit.pipelines.errors import NotBuiltError
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.types import InputPath, StrictModel


class QuantizeConfig(StrictModel):
    model: InputPath | None = Field(None, description="HF folder; default: merge's output")
    qtypes: list[str] = Field(default_factory=lambda: ["Q4_K_M"])


def run(config: QuantizeConfig, ctx: StageContext) -> Outcome:
    raise NotBuiltError("quantize")
