"""merge: fold a LoRA adapter into its base model reloaded in full precision, and prove the result is the same.

    slmkit merge --base smollm2-135m-instruct --adapter adapter/ --out merged/

The base is always loaded in float32, even for a QLoRA adapter: merging into 4-bit weights would round the
adapter's delta away. The check compares the *saved* merged folder, reloaded from disk, with base+adapter
on the same token batch, so a broken save is caught too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import Field

from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.rundir import write_json
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, ModelSpec, StrictModel

# The token batch merged and base+adapter are compared on: two short chats of no particular task (one with a
# system turn, of another length, so padding is exercised). Any text shows a broken merge or save; the check
# is of the weights, not of what the adapter learned.
PROBE = [
    [{"role": "user", "content": "Write one sentence about the weather, then list three colours."}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hello, who are you?"}],
]


class MergeConfig(StrictModel):
    base: ModelSpec | None = Field(None, description="base model; default: the adapter's base, else the recipe's `model`")
    adapter: InputPath | None = Field(None, description="adapter folder; default: finetune's output")
    tolerance: float = Field(1e-3, gt=0, description="max |logit| difference allowed, merged vs base+adapter")


def _base_spec(config: MergeConfig, ctx: StageContext, adapter: Path) -> str:
    if config.base:
        return config.base
    meta = adapter / "slmkit-finetune.json"
    if meta.exists():
        return json.loads(meta.read_text())["base_model"]
    if ctx.base_model:
        return ctx.base_model
    cfg = adapter / "adapter_config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("base_model_name_or_path"):
        return json.loads(cfg.read_text())["base_model_name_or_path"]
    raise SlmkitError("merge.base: no base model (set `base`, or the recipe's `model`)")


def _stop_ids(tokenizer, gen, adapter: Path) -> list[int]:
    """Token ids that end a reply: the model's eos, plus the end-of-turn token of a default chat template that
    training used (a Gemma base trained on the `gemma` template must stop at <end_of_turn>, not only <eos>)."""
    ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    ids = [i for i in ids if i is not None] or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    meta = adapter / "slmkit-finetune.json"
    stop = json.loads(meta.read_text()).get("stop") if meta.exists() else None
    if stop:
        tok = tokenizer.convert_tokens_to_ids(stop)
        if isinstance(tok, int) and tok != tokenizer.unk_token_id and tok not in ids:
            ids.append(tok)
    return ids


def _probe_batch(tokenizer):
    """A few real chat prompts (or plain text where there is no template) as one padded batch."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in PROBE]
    else:
        texts = [m[-1]["content"] for m in PROBE]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _logits(model, batch):
    import torch

    with torch.no_grad():
        out = model(**batch).logits
    return out.masked_fill(~batch["attention_mask"].bool()[..., None], 0.0)


def run(config: MergeConfig, ctx: StageContext) -> Outcome:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from slmkit.pipelines.core import models

    adapter = config.adapter or ctx.input("finetune", "adapter")
    if not (adapter / "adapter_config.json").exists():
        raise SlmkitError(f"merge.adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
    spec = _base_spec(config, ctx, adapter)
    path = models.resolve(spec, log=ctx.console.print)
    # The tokenizer saved with the adapter carries the chat template used in training.
    tok_src = adapter if (adapter / "tokenizer_config.json").exists() else path
    tokenizer = AutoTokenizer.from_pretrained(tok_src)

    ctx.console.print(f"merge: loading {spec} in float32 and applying {adapter.name}")
    try:
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise SlmkitError(f"merge.base: cannot load '{spec}' ({err})") from None
    base.eval()
    try:
        peft_model = PeftModel.from_pretrained(base, adapter)
    except (ValueError, RuntimeError, KeyError) as err:
        raise SlmkitError(f"merge.adapter: {adapter} does not fit base '{spec}' ({err})") from None
    peft_model.eval()
    batch = _probe_batch(tokenizer)
    reference = _logits(peft_model, batch)
    with peft_model.disable_adapter():
        plain = _logits(peft_model, batch)
    adapter_effect = (reference - plain).abs().max().item()

    merged = peft_model.merge_and_unload()
    out = ctx.out / "model"
    shutil.rmtree(out, ignore_errors=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen = merged.generation_config if merged.generation_config is not None else GenerationConfig()
    stops = _stop_ids(tokenizer, gen, adapter)
    if stops:
        gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    gen.save_pretrained(out)
    del merged, peft_model, base

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    diff = (_logits(reloaded, batch) - reference).abs().max().item()
    metrics = {"max_logit_diff": diff, "tolerance": config.tolerance, "adapter_effect_max_logit": adapter_effect,
               "probe_tokens": int(batch["attention_mask"].sum()), "base_model": spec,
               "parameters": sum(p.numel() for p in reloaded.parameters())}
    ctx.console.print(f"merge: max |logit| difference merged vs base+adapter = {diff:.2e} "
                      f"(tolerance {config.tolerance:g}; the adapter itself moves logits by up to {adapter_effect:.2e})")
    if diff > config.tolerance:
        raise StageFailed(f"merge: merged model's logits differ from base+adapter by {diff:.3e} "
                          f"> tolerance {config.tolerance:g}")
    write_json(out / "slmkit-merge.json", {**metrics, "adapter": str(adapter)})
    return Outcome(outputs={"model": "model"}, metrics=metrics)
