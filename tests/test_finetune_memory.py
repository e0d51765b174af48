"""finetune's memory budget: the estimate, the plan it picks, and a budgeted run that learns what an unbudgeted
one learns (same effective batch, same loss curve)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_finetune import config, losses, make_ctx, write_data

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune import memory

SMOLLM2 = memory.Shape(params=134_515_008, layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3,
                       vocab=49_152, tied=True)
DEMO = {"method": "lora", "dtype": "float32", "row_tokens": 243, "row_targets": 80, "lora_r": 16}


def test_shape_counts_smollm2_parameters_from_its_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49_152, tie_word_embeddings=True)
    assert memory.Shape.of(cfg).params == SMOLLM2.params  # what the shipped model's safetensors hold


@pytest.mark.parametrize("spec, mb", [("2.5GB", 2500), ("2400MiB", 2400 * 2**20 / 1e6), ("900", 900),
                                      (750, 750), ("1.5 gib", 1.5 * 2**30 / 1e6), (None, None)])
def test_budget_sizes(spec, mb):
    assert memory.budget_mb(spec) == (pytest.approx(mb) if mb else None)


def test_budget_is_shared_by_the_processes_and_auto_reads_the_machine():
    assert memory.budget_mb("4GB", processes=2) == pytest.approx(2000)
    assert 0 < memory.budget_mb("auto") < 1e9


def test_a_bad_budget_names_the_key():
    with pytest.raises(SlmkitError, match=r"finetune.memory_budget: '2,5 GB' is not a size"):
        memory.budget_mb("2,5 GB")


def test_estimate_shrinks_with_checkpointing_and_micro_batches():
    plain = memory.estimate(SMOLLM2, micro_batch=8, checkpointing=False, **DEMO)
    ckpt = memory.estimate(SMOLLM2, micro_batch=8, checkpointing=True, **DEMO)
    half = memory.estimate(SMOLLM2, micro_batch=4, checkpointing=False, **DEMO)
    assert ckpt.activations_mb < plain.activations_mb / 2
    assert half.activations_mb == pytest.approx(plain.activations_mb / 2)
    assert half.logits_mb == pytest.approx(plain.logits_mb / 2)
    assert plain.weights_mb == pytest.approx(SMOLLM2.params * 4 / 1e6)
    qlora = memory.estimate(SMOLLM2, micro_batch=8, checkpointing=False, **{**DEMO, "method": "qlora"})
    assert qlora.weights_mb < plain.weights_mb / 2


def test_plan_keeps_the_configured_run_when_it_fits_and_shrinks_it_when_not():
    cands = memory.plans(SMOLLM2, batch_size=8, grad_accum=1, checkpointing=False, **DEMO)
    assert all(c.micro_batch * c.grad_accum == 8 for c in cands)  # the effective batch never changes
    roomy, fits = memory.choose(cands, budget_mb=1e9)
    assert fits and (roomy.micro_batch, roomy.grad_accum, roomy.checkpointing) == (8, 1, False)
    assert memory.choose(cands, None)[0] == roomy
    tight, fits = memory.choose(cands, budget_mb=2300)
    assert fits and tight.total_mb <= 2300 and tight.micro_batch < 8
    # every cheaper plan (in the order tried) was over the budget: the choice is the first that fits
    assert all(c.total_mb > 2300 for c in cands[:cands.index(tight)])
    smallest, fits = memory.choose(cands, budget_mb=10)
    assert not fits and smallest == min(cands, key=lambda c: c.total_mb) and smallest.checkpointing


def test_a_recipe_that_asks_for_checkpointing_keeps_it():
    cands = memory.plans(SMOLLM2, batch_size=4, grad_accum=2, checkpointing=True, **DEMO)
    assert all(c.checkpointing for c in cands) and {c.micro_batch * c.grad_accum for c in cands} == {8}


def test_budgeted_run_trains_in_micro_batches_with_the_same_loss_curve(tiny_model_dir, tmp_path):
    """Dropout off, so the only difference left is how the same rows are split: the curves must agree to float
    rounding, and the budgeted run must really have used smaller micro-batches."""
    data = write_data(tmp_path / "d.jsonl", 12)
    kw = {"batch_size": 4, "max_steps": 6, "eval_fraction": 0.0, "keep": "last",
          "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    free = train_run(tiny_model_dir, data, tmp_path / "free", memory_budget=None, **kw)
    tight = train_run(tiny_model_dir, data, tmp_path / "tight", memory_budget=1, **kw)  # 1 MB: smallest plan
    assert free.metrics["memory_estimate"]["micro_batch"] == 4
    assert tight.metrics["memory_estimate"]["micro_batch"] == 1
    assert tight.metrics["memory_estimate"]["grad_accum"] == 4 and tight.metrics["memory_estimate"]["checkpointing"]
    a, b = losses(tmp_path / "free" / "metrics.jsonl"), losses(tmp_path / "tight" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), f"step {step}: {a[step]} vs {b[step]}"
    assert a[6] < a[1]  # it learned something, so equal curves are not two flat lines


def train_run(model: Path, data: Path, out: Path, **kw):
    from slmkit.pipelines.finetune import train

    outcome = train(config(model, data, **kw), make_ctx(out))
    json.dumps(outcome.metrics)  # the estimate goes into DONE.json
    return outcome
