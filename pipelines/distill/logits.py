"""distill mode `logits`: a local hf teacher scores each kept answer and its top-k log-probs per answer token
are stored with the record (format: pipelines/kd.py).

Rows cover the tokens after the prompt rendered with `add_generation_prompt=True`, up to the end of the chat
template's rendering of the whole conversation (so the end-of-turn token is included): the same tokens the
finetune stage trains on for the last assistant turn.
"""

from __future__ import annotations

from typing import Any

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune.kd import check_same_vocab, encode_topk, teacher_topk_from_logits, vocab_digest


def add_teacher_topk(records: list[dict[str, Any]], tcfg, config, ctx) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.pipelines.core.models import resolve

    tpath = resolve(tcfg.model)
    tok = AutoTokenizer.from_pretrained(tpath)
    student = config.student or ctx.base_model
    if student is None:
        raise SlmkitError("distill.student: mode 'logits' needs the student model (set `student` or the "
                          "recipe's `model`) to check that it shares the teacher's tokenizer")
    check_same_vocab(tok, AutoTokenizer.from_pretrained(resolve(student)), tcfg.model, student)
    model = AutoModelForCausalLM.from_pretrained(tpath)
    model.eval()
    digest = vocab_digest(tok)
    for rec in records:
        msgs = rec["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=True)
        full = tok.apply_chat_template(msgs, tokenize=True)
        prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
        if list(full[: len(prompt)]) != list(prompt):
            raise SlmkitError(f"distill logits: the chat template of {tcfg.model} does not extend the prompt "
                              "with the answer; logit rows could not be aligned")
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0]
        rows = logits[len(prompt) - 1: len(full) - 1]  # position t predicts token t+1
        ids, lps = teacher_topk_from_logits(rows, min(config.top_k, logits.shape[-1]))
        rec["teacher_topk"] = encode_topk(ids, lps, logits.shape[-1], digest)
