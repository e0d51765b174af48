"""Toy stages for testing the runner: real files, a real tiny model, checkpoints, and a way to die mid-stage.

They replace rows of the stage table (same names, same order), so the runner, the recipe model and the run
directory are exercised exactly as with the real stages.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

from pydantic import Field

from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, ModelSpec, StrictModel

CALLS: list[str] = []


class ToyCurate(StrictModel):
    text: InputPath
    upper: bool = False


def toy_curate(cfg: ToyCurate, ctx: StageContext) -> Outcome:
    CALLS.append("curate")
    text = cfg.text.read_text()
    (ctx.out / "train.txt").write_text(text.upper() if cfg.upper else text)
    return Outcome({"train": "train.txt"}, {"chars": len(text)})


class ToyFinetune(StrictModel):
    model: ModelSpec | None = None
    steps: int = Field(3, gt=0)
    die_at: int | None = None  # SIGKILL ourselves after this step's checkpoint (subprocess tests only)


def toy_finetune(cfg: ToyFinetune, ctx: StageContext) -> Outcome:
    """Scores the curated text with the tiny model, one checkpointed 'step' at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    CALLS.append("finetune")
    path = cfg.model or ctx.base_model
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok(ctx.input("curate", "train").read_text(), return_tensors="pt").input_ids[:, :64]
    ckpt = ctx.state / "progress.json"
    progress = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "losses": [], "resumed_from": None}
    if progress["step"]:
        progress["resumed_from"] = progress["step"]
    while progress["step"] < cfg.steps:
        with torch.no_grad():
            progress["losses"].append(float(model(ids, labels=ids).loss))
        progress["step"] += 1
        ckpt.write_text(json.dumps(progress))
        (ctx.out / "partial-output.txt").write_text(f"step {progress['step']}")
        if cfg.die_at == progress["step"]:
            os.kill(os.getpid(), signal.SIGKILL)
    (ctx.out / "result.json").write_text(json.dumps(progress))
    return Outcome({"adapter": "result.json"}, {"loss": progress["losses"][-1], "resumed_from": progress["resumed_from"]})


class ToyMerge(StrictModel):
    note: str = ""


def toy_merge(cfg: ToyMerge, ctx: StageContext) -> Outcome:
    CALLS.append("merge")
    data = json.loads(ctx.input("finetune", "adapter").read_text())
    (ctx.out / "merged.json").write_text(json.dumps({"from": data, "note": cfg.note}))
    return Outcome({"model": "merged.json"}, {})


class ToyEmpty(StrictModel):
    pass


def toy_unused(cfg: ToyEmpty, ctx: StageContext) -> Outcome:
    raise AssertionError("not in these recipes")


TOYS = {
    "curate": (ToyCurate, toy_curate),
    "distill": (ToyEmpty, toy_unused),
    "finetune": (ToyFinetune, toy_finetune),
    "merge": (ToyMerge, toy_merge),
    "quantize": (ToyEmpty, toy_unused),
    "bench": (ToyEmpty, toy_unused),
}


def install(stages: dict) -> dict:
    """The stage table with every row swapped for its toy; returns the originals."""
    originals = dict(stages)
    for name, (config, run) in TOYS.items():
        stages[name] = replace(stages[name], config=config, run=run)
    return originals


def write_recipe(folder: Path, model: Path, **extra) -> Path:
    import yaml

    (folder / "data.txt").write_text("The invoice number is INV-1001 and the total is 250 EUR.\n")
    recipe = {"name": "toy", "model": str(model), "curate": {"text": "data.txt"}, "finetune": {"steps": 3},
              "merge": {}}
    for key, value in extra.items():
        recipe[key] = value
    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


if __name__ == "__main__":
    # `python toy_stages.py RECIPE RUNS_DIR [override…]`: run a toy recipe in a fresh process (for kill tests).
    import sys

    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run
    from slmkit.pipelines.core.stages import STAGES

    install(STAGES)
    recipe = load_recipe(sys.argv[1], sys.argv[3:])
    Run.open(recipe, sys.argv[2]).execute()
    print("CALLS", ",".join(CALLS))
