"""A transformers model in this process: one decoding loop over the KV cache, one token per step, so the time of
the first token is known and log-probabilities are at hand. Greedy at temperature 0 (the same request, the same
answer); otherwise sampled with `temperature` and `top_p` from a generator seeded by the request's `seed`."""

from __future__ import annotations

import threading
import time

from slmkit.pipelines.backends.base import ClientSpec, Completion, Request, completion_prompt
from slmkit.pipelines.backends.registry import register
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy

STOP_WINDOW = 8  # tokens decoded again after each step to spot a stop string that ends there


def cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


@register("hf")
class HFClient:
    def __init__(self, spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from slmkit.pipelines.core.models import resolve

        if spec.n_threads:
            torch.set_num_threads(spec.n_threads)
        self.spec = spec
        path = resolve(spec.location)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = {*(eos if isinstance(eos, list) else [eos]), self.tok.eos_token_id} - {None}
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    def prompt_ids(self, messages: list[dict]):
        if self.spec.api == "chat":
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
        return self.tok(completion_prompt(messages), return_tensors="pt")["input_ids"]

    def _next(self, logits, req: Request, gen):
        import torch

        if req.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / req.temperature, dim=-1)
        if req.top_p is not None and req.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < req.top_p  # the smallest set whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(-1, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def complete(self, request: Request) -> Completion:
        import torch

        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            ids = self.prompt_ids(request.messages)
            gen = torch.Generator().manual_seed(int(request.seed)) if request.seed is not None else None
            new: list[int] = []
            top: list[dict[str, float]] = []
            first, past, step_input, finish = None, None, ids, "length"
            for _ in range(request.max_tokens):
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past, logits = out.past_key_values, out.logits[0, -1].float()
                if request.frequency_penalty and new:  # OpenAI's rule, over the whole answer so far
                    logits = logits - request.frequency_penalty * torch.bincount(
                        torch.tensor(new), minlength=logits.shape[-1])[:logits.shape[-1]]
                nxt = self._next(logits, request, gen)
                if nxt in self.eos:
                    finish = "stop"
                    break
                first = first or time.perf_counter()
                new.append(nxt)
                if request.logprobs:
                    lp = torch.log_softmax(logits, dim=-1).topk(request.logprobs)
                    top.append({self.tok.decode([int(i)]): float(v) for v, i in zip(lp.values, lp.indices,
                                                                                    strict=True)})
                if request.stop and any(s in self.tok.decode(new[-STOP_WINDOW:], skip_special_tokens=True)
                                        for s in request.stop):
                    finish = "stop"
                    break
                step_input = torch.tensor([[nxt]])
            end = time.perf_counter()
        text = cut_at_stop(self.tok.decode(new, skip_special_tokens=True), request.stop)
        return Completion(text, int(ids.shape[1]), self.count(text), None if first is None else first - start,
                          end - start, "tokenizer", finish, top or None)

    def close(self) -> None:
        pass
