"""merge: the saved merged model gives the logits of base+adapter, in full precision, with everything needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.merge import MergeConfig, run


def random_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def ctx_for(out: Path) -> StageContext:
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(stage="merge", out=out, state=out / ".state", cache=out / "cache", upstream={},
                        fingerprint="t", console=Console(quiet=True))


def test_merged_model_matches_base_plus_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    outcome = run(MergeConfig.model_validate({"base": str(tiny_model_dir), "adapter": str(adapter)}),
                  ctx_for(tmp_path / "m"))
    model_dir = tmp_path / "m" / outcome.outputs["model"]
    assert outcome.metrics["max_logit_diff"] < 1e-4
    assert outcome.metrics["adapter_effect_max_logit"] > 0.05  # the adapter matters, so the check means something
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model_dir / name).exists(), name
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    assert merged.dtype == torch.float32 and not any("lora" in k for k in merged.state_dict())
    # Independently of merge's own probe: a fresh base+adapter agrees with the saved model on other tokens.
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert not torch.allclose(base(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-3)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_tolerance_is_enforced(tiny_model_dir, tmp_path):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    with pytest.raises(StageFailed, match="differ from base\\+adapter"):
        run(MergeConfig.model_validate({"base": str(tiny_model_dir), "adapter": str(adapter), "tolerance": 1e-15}),
            ctx_for(tmp_path / "m"))


def test_not_an_adapter_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(SlmkitError, match="not a PEFT adapter"):
        run(MergeConfig.model_validate({"base": str(tiny_model_dir), "adapter": str(tmp_path)}), ctx_for(tmp_path / "m"))


def test_finetune_then_merge_verbs(tiny_model_dir, tmp_path, monkeypatch):
    """The two verbs chained: merge finds the base in the adapter's metadata, a QLoRA adapter merges into fp32."""
    pytest.importorskip("bitsandbytes")
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(6)))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "--model", str(tiny_model_dir), "--data", str(data), "--out", "ft",
                              "--method", "qlora", "--max-steps", "2", "--save-every", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", "--adapter", "ft/adapter", "--out", "merged"])
    assert res.exit_code == 0, res.output
    done = json.loads((tmp_path / "merged" / "DONE.json").read_text())
    assert done["metrics"]["max_logit_diff"] < 1e-4
    assert json.loads((tmp_path / "merged" / "model" / "config.json").read_text()).get("quantization_config") is None


def test_recipe_runs_finetune_then_merge_and_skips_on_rerun(tiny_model_dir, tmp_path):
    """Through the run directory: merge takes finetune's adapter; a second run finds both done."""
    from slmkit.pipelines.core.recipe import load_recipe
    from slmkit.pipelines.core.runner import Run

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n"
                                              for i in range(6)))
    (tmp_path / "r.yaml").write_text(
        f"name: ftmerge\nmodel: {tiny_model_dir}\nseed: 1\n"
        "finetune:\n  data: d.jsonl\n  max_steps: 3\n  save_every: 3\n  lora: {r: 4, alpha: 8}\nmerge: {}\n")
    run = Run.open(load_recipe(tmp_path / "r.yaml"), tmp_path / "runs")
    run.execute(console=Console(quiet=True))
    merged = json.loads((run.stage_dir("merge") / "DONE.json").read_text())
    assert merged["metrics"]["max_logit_diff"] < 1e-4
    assert (run.stage_dir("merge") / "model" / "model.safetensors").exists()
    stamp = (run.stage_dir("finetune") / "DONE.json").stat().st_mtime
    Run.open(load_recipe(tmp_path / "r.yaml"), tmp_path / "runs").execute(console=Console(quiet=True))
    assert (run.stage_dir("finetune") / "DONE.json").stat().st_mtime == stamp
