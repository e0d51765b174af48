"""finetune's memory budget: estimate a run's peak before it starts, then choose gradient checkpointing and a
micro-batch (with more accumulation, so the effective batch and the loss are the same) that stay under it.

The estimate adds what a LoRA/QLoRA step holds on a CPU (or one GPU):

    runtime      the process itself: Python, torch, transformers, the tokenizer (measured, a constant)
    weights      the base at its training dtype (NF4 for QLoRA's linear layers), loaded once
    adapter      LoRA parameters with their gradients and AdamW's two moments, in float32
    activations  what autograd keeps per token for the backward pass, per decoder layer: without
                 checkpointing a whole layer's intermediates (the attention matrix of each head over the row,
                 the MLP's widened tensors, LoRA's dropout copies); with it, each layer's input plus one
                 layer recomputed at a time
    logits       the vocabulary projection and its gradient at the target positions only (target_logits_only)

The per-token coefficients are in units of the model's own widths (hidden, intermediate, heads × row
length), fitted to peaks measured on SmolLM2-135M here; `make bench-finetune-memory` measures the peak of
every plan against its estimate, so a drift shows up as a number, not a surprise.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune.sft_data import IGNORE

MB = 1_000_000
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Fitted on SmolLM2-135M here (fp32, LoRA r=16 on every linear layer, rows of up to 243 tokens and 62 targets,
# micro-batches of 1, 2, 4 and 8, peak RSS of a fresh process): the line through the checkpointed peaks is
# straight (1,613 / 1,940 / 2,597 / 3,918 MB), its intercept 1,280 MB is runtime + weights + adapter; the
# plain peaks (2,074 / 2,942 / 4,163 / 7,546 MB) fit a line within 7%. Checkpointing keeps about 16 hidden-
# width vectors per layer and token, more than the layer input alone (the allocator's share is in there too).
RUNTIME_MB = 660          # Python, torch, transformers, peft, the tokenizer: the intercept less weights and adapter
ACT_PLAIN = {"hidden": 16.0, "intermediate": 6.0, "attention": 3.3}  # floats per token per layer, × width
ACT_CHECKPOINTED = {"hidden": 16.0}                                  # kept per layer between recomputations
LOGIT_COPIES = 3          # logits, their float32 log-softmax and its gradient, per target position


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a model's config.json."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: Any) -> Shape:
        h = config.hidden_size
        layers = config.num_hidden_layers
        inter = getattr(config, "intermediate_size", 4 * h)
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        vocab = config.vocab_size
        tied = bool(getattr(config, "tie_word_embeddings", True))
        per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter + 2 * h
        params = vocab * h * (1 if tied else 2) + layers * per_layer + h
        return cls(params=params, layers=layers, hidden=h, intermediate=inter, heads=heads, kv_heads=kv,
                   vocab=vocab, tied=tied)

    def linear_params(self) -> int:
        """Parameters in the decoder's linear layers (what QLoRA stores in 4 bits and LoRA wraps)."""
        return self.params - self.vocab * self.hidden * (1 if self.tied else 2) - self.hidden


@dataclass(frozen=True)
class Estimate:
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    runtime_mb: float
    weights_mb: float
    adapter_mb: float
    activations_mb: float
    logits_mb: float

    @property
    def total_mb(self) -> float:
        return self.runtime_mb + self.weights_mb + self.adapter_mb + self.activations_mb + self.logits_mb

    def as_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "total_mb": round(self.total_mb, 1)}

    def line(self) -> str:
        return (f"{self.total_mb / 1000:.2f} GB (weights {self.weights_mb / 1000:.2f}, activations "
                f"{self.activations_mb / 1000:.2f}, logits {self.logits_mb / 1000:.2f}, adapter and optimiser "
                f"{self.adapter_mb / 1000:.2f}, runtime {self.runtime_mb / 1000:.2f})")


def lora_params(shape: Shape, r: int) -> int:
    """LoRA on every linear layer of a decoder block: r × (in + out) per layer matrix."""
    head_dim = shape.hidden // shape.heads
    q_o = 2 * r * (shape.hidden + shape.heads * head_dim)
    k_v = 2 * r * (shape.hidden + shape.kv_heads * head_dim)
    mlp = 3 * r * (shape.hidden + shape.intermediate)
    return shape.layers * (q_o + k_v + mlp)


def estimate(shape: Shape, *, method: str, dtype: str, micro_batch: int, row_tokens: int, row_targets: int,
             checkpointing: bool, lora_r: int, grad_accum: int = 1) -> Estimate:
    """Peak memory of one training step over `micro_batch` rows of `row_tokens` tokens, `row_targets` of
    them scored (the longest row and the most targets a row has: the worst batch sets the peak)."""
    if method == "qlora":  # NF4 linear layers (0.5 byte + double-quantised scales), the rest at dtype
        weights = shape.linear_params() * 0.53 + (shape.params - shape.linear_params()) * BYTES[dtype]
    else:
        weights = shape.params * BYTES[dtype]
    adapter = lora_params(shape, lora_r) * 4 * 4  # parameter, gradient, AdamW's m and v, float32
    tokens = micro_batch * row_tokens
    width = {"hidden": shape.hidden, "intermediate": shape.intermediate, "attention": shape.heads * row_tokens}
    act_bytes = BYTES[dtype] if method == "lora" else 4
    if checkpointing:
        saved = sum(c * width[k] for k, c in ACT_CHECKPOINTED.items()) * shape.layers
        one_layer = sum(c * width[k] for k, c in ACT_PLAIN.items())
        activations = tokens * (saved + one_layer) * act_bytes
    else:
        activations = tokens * sum(c * width[k] for k, c in ACT_PLAIN.items()) * shape.layers * act_bytes
    logits = micro_batch * row_targets * shape.vocab * 4 * LOGIT_COPIES
    return Estimate(micro_batch=micro_batch, grad_accum=grad_accum, checkpointing=checkpointing,
                    runtime_mb=RUNTIME_MB, weights_mb=weights / MB, adapter_mb=adapter / MB,
                    activations_mb=activations / MB, logits_mb=logits / MB)


def plans(shape: Shape, *, batch_size: int, grad_accum: int, checkpointing: bool, **kw: Any) -> list[Estimate]:
    """Every way to run the configured effective batch: each micro-batch that divides batch_size, with and
    without checkpointing (only with, when the recipe asks for it), cheapest first in compute."""
    out = []
    for micro in [d for d in range(batch_size, 0, -1) if batch_size % d == 0]:
        for ckpt in ((True,) if checkpointing else (False, True)):
            out.append(estimate(shape, micro_batch=micro, grad_accum=grad_accum * batch_size // micro,
                                checkpointing=ckpt, **kw))
    # Recomputing every layer costs about a third more compute; a smaller micro-batch on the same rows costs
    # little (measured: bench-finetune-memory), so shrink the micro-batch first and checkpoint last.
    return sorted(out, key=lambda e: (e.checkpointing, -e.micro_batch))


def choose(candidates: list[Estimate], budget_mb: float | None) -> tuple[Estimate, bool]:
    """The cheapest plan under the budget; when none fits, the smallest (and False: over budget)."""
    if budget_mb is None:
        return candidates[0], True
    for plan in candidates:
        if plan.total_mb <= budget_mb:
            return plan, True
    return min(candidates, key=lambda e: e.total_mb), False


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)
_UNIT = {"gb": 1e9, "g": 1e9, "gib": 2**30, "mb": 1e6, "m": 1e6, "mib": 2**20, None: 1e6}


def budget_mb(spec: str | float | None, processes: int = 1) -> float | None:
    """finetune.memory_budget in MB for one training process: 'auto' is half the memory available now,
    shared by the processes of this machine; a number is MB; '2.5GB', '2400MiB' say their unit."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        import psutil

        return psutil.virtual_memory().available / 2 / MB / processes
    if isinstance(spec, (int, float)):
        return float(spec) / processes
    m = _SIZE.match(spec)
    if not m:
        raise SlmkitError(f"finetune.memory_budget: '{spec}' is not a size (e.g. 2.5GB, 900MB, auto, null)")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _UNIT[unit] / MB / processes


def row_extent(rows: list[list[Any]]) -> tuple[int, int]:
    """(tokens of the longest row, most scored targets in a row) over packed training rows."""
    tokens = max((sum(len(e.input_ids) for e in row) for row in rows), default=1)
    targets = max((sum(sum(1 for t in e.labels if t != IGNORE) for e in row) for row in rows), default=1)
    return tokens, max(1, targets)
