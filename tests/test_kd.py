"""Logit KD: the stored format round-trips, the loss is right at its limits, and training on it pulls a
student's distribution toward a teacher's (tiny random models sharing a tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune.kd import (
    check_same_vocab,
    decode_topk,
    encode_topk,
    kd_loss,
    teacher_topk_from_logits,
)


def test_topk_roundtrip():
    ids = np.array([[3, 1], [7, 2]])
    lp = np.array([[-0.1, -2.5], [-0.3, -1.5]])
    back_ids, back_lp = decode_topk(encode_topk(ids, lp, 10, "x"))
    assert (back_ids == ids).all() and np.allclose(back_lp, lp, atol=1e-3)


def test_loss_limits():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    targets = torch.randint(0, 11, (5,))
    ids, lp = teacher_topk_from_logits(logits, 11)  # teacher == student, full support
    teacher = {"ids": torch.tensor(ids), "logprobs": torch.tensor(lp)}
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(kd_loss(logits, targets, teacher, alpha=1.0), ce)
    assert kd_loss(logits, targets, teacher, alpha=0.0).abs() < 1e-5  # KL(p||p) = 0
    other = {"ids": teacher["ids"], "logprobs": torch.tensor(lp[::-1].copy())}
    assert kd_loss(logits, targets, other, alpha=0.0) > 1e-3


def test_kd_training_pulls_student_to_teacher(tmp_path):
    from helpers import tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_llama(tmp_path / "t", seed=1)
    tiny_llama(tmp_path / "s", seed=2)
    check_same_vocab(AutoTokenizer.from_pretrained(tmp_path / "t"), AutoTokenizer.from_pretrained(tmp_path / "s"))
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "t").eval()
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    torch.manual_seed(0)
    x = torch.randint(3, 200, (4, 16))
    with torch.no_grad():
        # A random model is near-uniform; sharpen it so it has something to teach, like a trained teacher.
        t_logits = 8 * teacher(x).logits[:, :-1].reshape(-1, teacher.config.vocab_size)
    ids, lp = teacher_topk_from_logits(t_logits, 32)
    t = {"ids": torch.tensor(ids), "logprobs": torch.tensor(lp)}
    targets = x[:, 1:].reshape(-1)

    def kl_full():
        with torch.no_grad():
            s = torch.log_softmax(student(x).logits[:, :-1].reshape(-1, teacher.config.vocab_size), -1)
            tl = torch.log_softmax(t_logits, -1)
            return float((tl.exp() * (tl - s)).sum(-1).mean())

    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    kl0, losses = kl_full(), []
    for _ in range(30):
        logits = student(x).logits[:, :-1].reshape(-1, teacher.config.vocab_size)
        loss = kd_loss(logits, targets, t, alpha=0.0, temperature=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.7
    assert kl_full() < kl0 * 0.8


def test_different_vocab_is_a_clear_error(tmp_path):
    from helpers import tiny_tokenizer

    with pytest.raises(SlmkitError, match="share a tokenizer"):
        check_same_vocab(tiny_tokenizer(256), tiny_tokenizer(300))
