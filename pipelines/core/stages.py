"""The stage registry: the pipeline's order, each stage's config and the upstream stages it reads.

A table, so adding a stage is one row; `Recipe` gets one optional section per row.
"""

from __future__ import annotations

from slmkit.pipelines import agent, bench, curate, distill, finetune, merge, quantize, route
from slmkit.pipelines.core.stage import Stage

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("curate", curate.CurateConfig, curate.run, (), "select the domain data that teaches the task"),
        Stage("distill", distill.DistillConfig, distill.run, ("curate",), "a teacher LLM writes the training data"),
        Stage("finetune", finetune.FinetuneConfig, finetune.run, ("distill", "curate"), "LoRA / QLoRA fine-tuning"),
        Stage("merge", merge.MergeConfig, merge.run, ("finetune",), "merge the adapter into the base model"),
        Stage("quantize", quantize.QuantizeConfig, quantize.run, ("merge", "curate"), "GGUF export and 4-bit quantisation"),
        Stage("bench", bench.BenchConfig, bench.run, ("quantize", "merge", "curate"), "quality, speed and cost vs a baseline"),
        Stage("route", route.RouteConfig, route.run, ("bench",), "which requests the SLM takes, and what that saves"),
        Stage("agent", agent.AgentConfig, agent.run, ("quantize", "merge"), "tool workflows: lm agency vs code agency"),
    )
}

ORDER: list[str] = list(STAGES)


def folder_name(stage: str) -> str:
    """`runs/<name>/<NN_stage>`: numbered so a listing reads in pipeline order."""
    return f"{ORDER.index(stage) + 1:02d}_{stage}"
