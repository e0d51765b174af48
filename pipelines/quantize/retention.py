"""Quality retention: how far a GGUF's next-token distributions drift from a reference on held-out text.

Figures per comparison: mean and 99th-percentile KL(ref ‖ test) over positions, top-1 agreement, the
perplexity of each and their ratio. All models see the same token ids (from the HF tokenizer), chunk by chunk,
so only one chunk of logits per model is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmkit.pipelines.backends import llama_adapter

ROWS_PER_BLOCK = 64  # positions scored at a time: 25 MB per float64 array at a 49k vocabulary


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass
class Tally:
    kld: list[np.ndarray] = field(default_factory=list)
    agree: int = 0
    n: int = 0
    nll_ref: float = 0.0
    nll_test: float = 0.0

    def add(self, ref_logits: np.ndarray, test_logits: np.ndarray, ids: list[int]) -> None:
        # Position i predicts token i+1; the last position has no target and is left out. Rows go through in
        # blocks: a chunk's float64 log-softmax over a 49k-word vocabulary is 200 MB an array, and the KL term
        # needs five of them at once (the demo's quantize peaked at 3.2 GB); each row's figures do not depend
        # on the block it is in.
        tgt = np.asarray(ids[1:])
        for start in range(0, len(tgt), ROWS_PER_BLOCK):
            end = min(start + ROWS_PER_BLOCK, len(tgt))
            lr, lt = _log_softmax(ref_logits[start:end]), _log_softmax(test_logits[start:end])
            self.kld.append((np.exp(lr) * (lr - lt)).sum(-1))
            self.agree += int((lr.argmax(-1) == lt.argmax(-1)).sum())
            rows = np.arange(end - start)
            self.nll_ref -= float(lr[rows, tgt[start:end]].sum())
            self.nll_test -= float(lt[rows, tgt[start:end]].sum())
        self.n += len(tgt)

    def summary(self) -> dict:
        k = np.concatenate(self.kld) if self.kld else np.zeros(1)
        ppl_ref, ppl_test = float(np.exp(self.nll_ref / max(self.n, 1))), float(np.exp(self.nll_test / max(self.n, 1)))
        return {"tokens": self.n, "kld_mean": float(k.mean()), "kld_p99": float(np.percentile(k, 99)),
                "top1_agreement": self.agree / max(self.n, 1), "ppl_ref": ppl_ref, "ppl": ppl_test,
                "ppl_ratio": ppl_test / ppl_ref}


def token_chunks(model_dir: Path, text: str, max_tokens: int, chunk: int) -> list[list[int]]:
    """The text as HF token ids cut into windows of `chunk`; each window starts with BOS where the tokenizer
    adds one (Gemma is lost without it), so every model sees exactly the ids it would see in use."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    bos = [full[0]] if len(full) > len(plain) and full[0] == tok.bos_token_id else []
    ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
    step = chunk - len(bos)
    return [bos + ids[i: i + step] for i in range(0, len(ids), step) if len(ids[i: i + step]) > 1]


class HFScorer:
    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def close(self) -> None:
        self.model = None


class GGUFScorer:
    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        # One batch per chunk (n_batch = n_ubatch = n_ctx): every chunk is evaluated the same way in each file.
        self.llm = llama_adapter.open_llama(path, n_ctx, threads or 2, logits_all=True, what="quantize retention",
                                            n_batch=n_ctx, n_ubatch=n_ctx, n_gpu_layers=0)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(llama_adapter.scores(self.llm)[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


def compare(chunks: list[list[int]], scorers: dict[str, object], pairs: dict[str, tuple[str, str]],
            progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Score every chunk once per scorer; `pairs` maps a label to (reference, test) scorer names.

    Returns label → Tally.summary(). Each scorer's logits for a chunk are computed once and shared by all pairs.
    """
    tallies = {label: Tally() for label in pairs}
    for i, ids in enumerate(chunks):
        logits = {name: s.logits(ids) for name, s in scorers.items()}
        for label, (ref, test) in pairs.items():
            tallies[label].add(logits[ref], logits[test], ids)
        if progress:
            progress(i + 1, len(chunks))
    return {label: t.summary() for label, t in tallies.items()}


def compare_opened(chunks: list[list[int]], openers: dict[str, Callable[[], object]],
                   pairs: dict[str, tuple[str, str]], progress: Callable[[int, int], None] | None = None
                   ) -> dict[str, dict]:
    """`compare` over scorers opened here from `openers` (name → factory) and closed, all of them, before it
    returns, whether it finishes or fails; the caller holds no scorer between passes."""
    import gc

    scorers: dict[str, object] = {}
    try:
        for name, open_scorer in openers.items():
            scorers[name] = open_scorer()
        return compare(chunks, scorers, pairs, progress)
    finally:
        for s in scorers.values():
            s.close()
        scorers.clear()
        gc.collect()  # the HF model's module tree holds reference cycles; free its weights now, not later
