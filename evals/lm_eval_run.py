"""lm-eval tasks through lm-eval's own Python API, for a local HF folder or a GGUF file, with no model hub.

    run_lm_eval("gguf", Path("model-Q4_K_M.gguf"), ["slmkit_ticket_urgency"], limit=20)
    -> {"slmkit_ticket_urgency": {"acc": 0.55, "acc_stderr": 0.11}}

Tasks are names of the YAMLs in slmkit's own folder `evals/lm_eval/` (found by a TaskManager pointed at it,
without lm-eval's built-in hub tasks) or paths to task YAMLs. In those YAMLs, relative
`dataset_kwargs.data_files` are read against the YAML's own folder, so a task can ship beside its data.

`hf` targets run lm-eval's HFLM on the folder. `gguf` targets run `SlmkitGGUFLM` below, an lm-eval model
registered as "slmkit-gguf" that drives llama-cpp-python in-process (lm-eval's own "gguf" model talks to a
server and has no rolling log-likelihood). It shares lm-eval's `TemplateLM` tokenisation rules with HFLM, so
the two kinds score the same text as the same tokens and give the same log-likelihoods for the same weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from slmkit.pipelines.backends import llama_adapter
from slmkit.pipelines.core.defaults import N_CTX, usable_cores
from slmkit.pipelines.core.errors import SlmkitError

TASK_DIR = Path(__file__).parent / "lm_eval"
Kind = Literal["hf", "gguf"]
GGUF_MODEL_NAME = "slmkit-gguf"


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: sums over a continuation stay exact enough to compare HF with GGUF."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@register_model(GGUF_MODEL_NAME)
class SlmkitGGUFLM(TemplateLM):
    """An lm-eval model over a GGUF file, run in-process by llama-cpp-python.

    Log-likelihoods need the logits at every position of the continuation, so the model is opened with
    `logits_all=True` (memory: n_ctx × vocabulary floats; keep n_ctx modest for large vocabularies).
    The choices of a multiple-choice item pay for their common context once (see `_logprobs_at`), and a
    request's figures never depend on the requests before it.
    """

    def __init__(self, path: str | Path, n_ctx: int = N_CTX["lm_eval"], n_threads: int | None = None,
                 max_gen_toks: int = 256, add_bos_token: bool | None = None, **_: Any) -> None:
        super().__init__()
        self.path = path = Path(path)
        what = "lm-eval gguf target"
        threads = int(n_threads or usable_cores())
        self.llm = llama_adapter.open_llama(path, n_ctx, threads, logits_all=True, what=what)
        trained = llama_adapter.n_ctx_train(self.llm)
        if 0 < trained < int(n_ctx):  # as HFLM: never longer than the model was trained for (same truncation)
            self.llm.close()
            self.llm = llama_adapter.open_llama(path, trained, threads, logits_all=True, what=what)
        self._max_gen_toks = int(max_gen_toks)
        self._context: list[int] | None = None  # the context last prefilled from scratch (see _logprobs_at)
        # As HFLM: None means "what the tokenizer does by default", which the GGUF records at conversion.
        self.add_bos_token = llama_adapter.adds_bos(self.llm) if add_bos_token is None else bool(add_bos_token)

    # -- what TemplateLM needs ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.llm.token_eos()

    @property
    def prefix_token_id(self) -> int:
        bos = self.llm.token_bos()
        return bos if bos >= 0 else self.eot_token_id  # HFLM's choice: BOS if the model has one

    @property
    def max_length(self) -> int:
        return self.llm.n_ctx()

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        add_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos_text = self.llm.detokenize([self.llm.token_bos()], special=True).decode(errors="ignore") \
            if self.llm.token_bos() >= 0 else None
        if add_special_tokens is None and bos_text and string.startswith(bos_text):
            add_bos = False  # the text already has its BOS, as HFLM checks
        # special=True: special tokens written in the text are parsed as such, as HF tokenizers do.
        return self.llm.tokenize(string.encode(), add_bos=add_bos, special=True)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode(errors="ignore")

    # -- chat template (lm-eval's apply_chat_template) --------------------------------------------------------
    @property
    def template(self) -> str | None:
        """The chat template the GGUF carries (written at conversion), or None for a base model without one."""
        return self.llm.metadata.get("tokenizer.chat_template") or None

    @property
    def tokenizer_name(self) -> str:
        return f"gguf:{self.path.name}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the model was trained to read it, rendered from the GGUF's own template (the
        renderer llama-cpp-python uses for chat requests). lm-eval passes add_generation_prompt=False when
        the last message is the start of the assistant's answer (`gen_prefix`): that answer is left open, as
        transformers' continue_final_message leaves it."""
        if self.template is None:
            raise SlmkitError(f"lm-eval gguf target {self.path}: no chat template in the GGUF")
        tok = lambda i: self.llm.detokenize([i], special=True).decode(errors="ignore") if i >= 0 else ""  # noqa: E731
        history, prefix = list(chat_history), ""
        if not add_generation_prompt and history and history[-1]["role"] == "assistant":
            prefix = history.pop()["content"]
        render = llama_adapter.chat_formatter(self.template, eos_token=tok(self.llm.token_eos()),
                                              bos_token=tok(self.llm.token_bos()))
        return render(messages=history).prompt + prefix

    # -- scoring ------------------------------------------------------------------------------------------
    def _logprobs_at(self, tokens: list[int], first: int) -> np.ndarray:
        """Log-probabilities predicted at positions first..len(tokens)-1 after evaluating `tokens`.

        Position `first` is the context's last token (its logits predict the continuation's first one). The
        same (context, continuation) always gets the same figures, whatever was scored before: a context is
        prefilled from scratch, on its own, and the continuation after it. The context just prefilled that
        way is reused as it stands for the next request with the same context (the other choices of an
        item); no other shared prefix is, because prefilling the rest of a context after part of it splits
        the batches differently, which rounds the logits differently.
        """
        llm = self.llm
        context = tokens[: first + 1]
        if self._context != context:
            llm.reset()
            llm.eval(context)
            self._context = context
        llama_adapter.rewind(llm, len(context))  # forget the previous continuation; the context's logits stay
        if len(tokens) > len(context):
            llm.eval(tokens[len(context):])
        return _log_softmax(llama_adapter.scores(llm)[first: len(tokens)])

    def _score(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[float, bool]:
        whole = (context_enc + continuation_enc)[-(self.max_length + 1):]
        inputs, n = whole[:-1], len(continuation_enc)
        if n == 0:
            return 0.0, True
        if n > len(inputs):
            raise SlmkitError(f"lm-eval gguf target: a continuation of {n} tokens does not fit in n_ctx "
                              f"{self.max_length}; raise n_ctx")
        logprobs = self._logprobs_at(inputs, len(inputs) - n)
        picked = logprobs[np.arange(n), continuation_enc]
        greedy = bool((logprobs.argmax(axis=-1) == np.asarray(continuation_enc)).all())
        return float(picked.sum()), greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: Any) -> list[tuple[float, bool]]:
        # Sorted by tokens so that requests sharing a context run back to back and reuse its evaluation.
        order = sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2])
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for i in _progress(order, "log-likelihood (gguf)", disable_tqdm):
            key, context_enc, continuation_enc = requests[i]
            out[i] = self._score(context_enc, continuation_enc)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for req in _progress(requests, "rolling log-likelihood (gguf)", disable_tqdm):
            (text,) = req.args
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            total = sum(self._score(ctx, cont)[0] for ctx, cont in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first of its `until` strings (lm-eval's contract)."""
        outputs = []
        for req in _progress(requests, "generate (gguf)", disable_tqdm):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_toks = int(gen_kwargs.get("max_gen_toks", self._max_gen_toks))
            prompt = self.tok_encode(context)[-(self.max_length - max_toks):]
            # A token list as prompt: llama-cpp-python adds no BOS of its own, so the tokens are exactly the
            # ones tok_encode made (the same rule the log-likelihood requests follow).
            self.llm.reset()  # from scratch: the answer must not depend on the request before it
            self._context = None
            answer = self.llm.create_completion(prompt=prompt, max_tokens=max_toks, temperature=0.0,
                                                stop=until or None)["choices"][0]["text"]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            outputs.append(answer)
        return outputs

    def close(self) -> None:
        self.llm.close()


def _progress(items, label: str, disable: bool) -> Iterator:
    """Rich progress over lm-eval's requests (it can be thousands of forward passes on a CPU)."""
    from rich.progress import track

    items = list(items)
    if disable or len(items) < 2:
        yield from items
        return
    yield from track(items, description=label, transient=True)


# -- tasks ----------------------------------------------------------------------------------------------
def _task_manager():
    from lm_eval.tasks import TaskManager

    # include_defaults=False: lm-eval's thousands of built-in (hub) tasks are neither needed nor indexed.
    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


def _task_config(spec: str, manager) -> dict:
    """The full config of one task (a name in evals/lm_eval/ or a YAML path), data_files made absolute."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(spec)
    path = Path(entry.yaml_path) if entry is not None and entry.yaml_path else Path(spec)
    if entry is None and not (path.suffix in (".yaml", ".yml") and path.is_file()):
        known = ", ".join(sorted(manager.all_subtasks)) or "none"
        raise SlmkitError(f"lm-eval task '{spec}': not a task in {TASK_DIR} (known: {known}) nor a YAML file")
    try:
        cfg = load_yaml(path, resolve_func=True)
    except Exception as exc:  # a YAML or !function error, named with its file
        raise SlmkitError(f"lm-eval task file {path}: {exc}") from None
    if "task" not in cfg:
        raise SlmkitError(f"lm-eval task file {path}: no 'task' key (only single tasks are supported, not groups)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": _absolute(files, path.parent, path)}
    return cfg


def _absolute(files, base: Path, yaml_path: Path):
    """data_files (a path, a list, or split -> path(s)) with relative local paths read against `base`."""
    if isinstance(files, dict):
        return {split: _absolute(f, base, yaml_path) for split, f in files.items()}
    if isinstance(files, list):
        return [_absolute(f, base, yaml_path) for f in files]
    if "://" in str(files) or Path(files).is_absolute():
        return files
    resolved = (base / files).resolve()
    if not resolved.is_file():
        raise SlmkitError(f"lm-eval task file {yaml_path}: dataset_kwargs.data_files '{files}' -> {resolved}, "
                          f"which does not exist")
    return str(resolved)


def _flatten(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's {"task": {"acc,none": 0.5, "alias": ...}} as {"task": {"acc": 0.5}} (other filters keep theirs)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # "alias", "N/A" stderrs
            name, filt = key.split(",", 1)
            row[name if filt == "none" else key] = float(value)
        out[task] = row
    return out


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def open_lm(kind: Kind, path: Path, n_threads: int | None = None) -> Iterator[TemplateLM]:
    """The lm-eval model for a target, closed on exit. `hf`: a local folder, loaded with no hub access."""
    path = Path(path)
    if kind == "gguf":
        lm = SlmkitGGUFLM(path, n_threads=n_threads)
        try:
            yield lm
        finally:
            lm.close()
    elif kind == "hf":
        if not (path / "config.json").is_file():
            raise SlmkitError(f"lm-eval hf target: {path} is not a model folder (no config.json)")
        from lm_eval.models.huggingface import HFLM

        # A local folder is read from disk only: no hub call is made (the tests run with HF_HUB_OFFLINE=1).
        with _torch_threads(n_threads):
            yield HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=1)
    else:
        raise SlmkitError(f"lm-eval target kind '{kind}': expected one of hf, gguf")


def has_chat_template(lm: TemplateLM) -> bool:
    if isinstance(lm, SlmkitGGUFLM):
        return lm.template is not None
    return bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))


def run_lm_eval(kind: Kind, path: Path, tasks: list[str], limit: int | None = None,
                n_threads: int | None = None, chat_template: bool | None = None) -> dict[str, dict[str, float]]:
    """Run lm-eval tasks on one local target; returns task -> metric -> value (stderrs as `<metric>_stderr`).

    `chat_template=None` renders each prompt with the model's own chat template when it has one (an instruct
    or fine-tuned model reads its task the way it was trained to; the demo's tickets tasks are written for
    that), and as plain text for a base model without one."""
    import lm_eval

    if not tasks:
        raise SlmkitError("run_lm_eval: no tasks given")
    manager = _task_manager()
    configs = [_task_config(t, manager) for t in tasks]
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines would drown the Rich output
    with open_lm(kind, path, n_threads) as lm, _torch_threads(n_threads):
        templated = has_chat_template(lm) if chat_template is None else chat_template
        out = lm_eval.simple_evaluate(model=lm, tasks=configs, task_manager=manager, limit=limit,
                                      bootstrap_iters=1000, log_samples=False, verbosity="WARNING",
                                      apply_chat_template=templated)
    return _flatten(out["results"])


