"""Logit knowledge distillation: the teacher's top-k log-probs stored with the data, and the KD loss.

Data format (one JSONL record of distill's `train` in mode `logits`):

    {"messages": [...chat...],
     "teacher_topk": {"k": K, "vocab": V, "tokenizer": "<digest of the teacher vocabulary>",
                      "ids": "<base64 int32, shape (T, K)>", "logprobs": "<base64 float16, shape (T, K)>"}}

T is the number of assistant-answer tokens (in order, the tokens the student is trained to predict); row t
holds the teacher's K most likely next tokens at the position that predicts answer token t, and their
log-probabilities (natural log, temperature 1). `encode_topk` / `decode_topk` convert to and from arrays.

The loss (`kd_loss`) is what the finetune trainer calls with the scored positions only:

    kd_loss(logits, targets, teacher, num_items_in_batch, alpha=0.5, temperature=1.0)
      logits:  (N, V) student logits at the N scored positions (row-major over the batch)
      targets: (N,)   the true next tokens
      teacher: {"ids": (N, K) long, "logprobs": (N, K) float}, aligned with `logits`
    loss = α·CE(student, targets) + (1−α)·T²·KL(teacher‖student), both summed over positions and divided by
    num_items_in_batch (or N). The KL is computed over the teacher's top-k support: the teacher's stored
    log-probs are renormalised over its K tokens, the student's (temperature-scaled) log-softmax over the full
    vocabulary is gathered at those K ids and renormalised too, so both are distributions on the same K tokens.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np

from slmkit.pipelines.core.errors import SlmkitError


def vocab_digest(tokenizer) -> str:
    """A digest of a tokenizer's vocabulary (token -> id); equal digests mean top-k ids mean the same tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256()
    for tok, idx in vocab:
        h.update(f"{idx}\t{tok}\n".encode())
    return h.hexdigest()[:16]


def check_same_vocab(teacher_tok, student_tok, teacher_name: str = "teacher", student_name: str = "student") -> None:
    """Logit KD compares distributions id by id, so the vocabularies must be identical."""
    a, b = vocab_digest(teacher_tok), vocab_digest(student_tok)
    if a != b:
        raise SlmkitError(
            f"logit distillation needs teacher and student to share a tokenizer: {teacher_name} has "
            f"{len(teacher_tok)} tokens (vocab {a}), {student_name} has {len(student_tok)} (vocab {b}); "
            "use mode 'generate' instead")


def encode_topk(ids: np.ndarray, logprobs: np.ndarray, vocab: int, tokenizer_digest: str) -> dict[str, Any]:
    """(T, K) ids and log-probs -> the compact JSON-able record (int32 ids, float16 log-probs, base64)."""
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    lp = np.ascontiguousarray(logprobs, dtype=np.float16)
    if ids.shape != lp.shape or ids.ndim != 2:
        raise ValueError(f"top-k ids {ids.shape} and log-probs {lp.shape} must be equal 2-D shapes")
    return {"k": int(ids.shape[1]), "vocab": int(vocab), "tokenizer": tokenizer_digest,
            "ids": base64.b64encode(ids.tobytes()).decode(), "logprobs": base64.b64encode(lp.tobytes()).decode()}


def decode_topk(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of encode_topk: (T, K) int64 ids and float32 log-probs."""
    k = int(rec["k"])
    ids = np.frombuffer(base64.b64decode(rec["ids"]), dtype=np.int32).reshape(-1, k).astype(np.int64)
    lp = np.frombuffer(base64.b64decode(rec["logprobs"]), dtype=np.float16).reshape(-1, k).astype(np.float32)
    if ids.shape != lp.shape:
        raise SlmkitError(f"teacher_topk: {ids.shape[0]} id rows but {lp.shape[0]} log-prob rows")
    return ids, lp


def kd_loss(logits, targets, teacher: dict, num_items_in_batch=None, alpha: float = 0.5, temperature: float = 1.0):
    """α·CE + (1−α)·T²·KL(teacher‖student) over the teacher's stored top-k (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    denom = num_items_in_batch if num_items_in_batch is not None else max(int(targets.numel()), 1)
    ce = F.cross_entropy(logits, targets, reduction="sum")
    t_ids = teacher["ids"].to(logits.device).long()
    t_lp = teacher["logprobs"].to(logits.device).float()
    if t_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"teacher top-k has {t_ids.shape[0]} rows for {logits.shape[0]} scored positions")
    # Teacher: renormalise its top-k at temperature T (log-probs divide by T like logits do, up to a constant).
    t_logp = torch.log_softmax(t_lp / temperature, dim=-1)
    s_logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, t_ids)
    s_logp = s_logp - torch.logsumexp(s_logp, dim=-1, keepdim=True)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum()
    return (alpha * ce + (1.0 - alpha) * temperature**2 * kl) / denom


def make_kd_loss(alpha: float = 0.5, temperature: float = 1.0):
    """kd_loss bound to a config's alpha and temperature, with the trainer's call signature."""
    def bound(logits, targets, teacher, num_items_in_batch=None):
        return kd_loss(logits, targets, teacher, num_items_in_batch, alpha=alpha, temperature=temperature)
    return bound


def teacher_topk_from_logits(logits, k: int):
    """(T, V) teacher logits -> (T, K) ids and log-probs, as numpy (for storing with encode_topk)."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)
    vals, ids = lp.topk(k, dim=-1)
    return ids.cpu().numpy(), vals.cpu().numpy()
