"""The pieces finetune hands to `transformers.Trainer`: the base model with LoRA or QLoRA, a Trainer that
counts real tokens (and takes a distillation loss), and callbacks for the Rich progress bar, the metrics JSONL
and checkpoints that a resume can trust.

The Trainer is used, not a hand-written loop, because it already saves and restores everything an exact resume
needs (adapter, optimizer, scheduler, RNG states, the sampler's position) and runs unchanged under
`accelerate launch`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune.sft_data import IGNORE

TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: its presence means the rest is there


# ---------------------------------------------------------------- model


def bitsandbytes_problem() -> str | None:
    """Why 4-bit NF4 cannot run here, or None when it can."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means the same thing to the user
        return f"bitsandbytes cannot be loaded ({type(err).__name__}: {err}); pip install bitsandbytes"
    return None


def load_base(path: str, method: str, dtype: str, gradient_checkpointing: bool):
    """The base model for training: full precision for LoRA, NF4 with double quantisation for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}  # "float32" | "bfloat16" | "float16"
    if method == "qlora":
        problem = bitsandbytes_problem()
        if problem:
            raise SlmkitError(f"finetune.method=qlora: {problem}; use method: lora")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        # 4-bit weights are placed at load time: on this process's GPU under DDP, else on the CPU.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": f"cuda:{local}"} if torch.cuda.is_available() else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise SlmkitError(f"finetune.model: cannot load '{path}' ({err})") from None
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: str | list[str]):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise SlmkitError(f"finetune.lora.target_modules: {err}") from None


def compile_blocks(model) -> int:
    """Compile each repeated block (the classes transformers lists in `_no_split_modules`, e.g. the decoder
    layer) in place, and return how many were compiled.

    Not the whole model: the step picks its scored positions with a boolean mask (`logits_to_keep`), whose
    data-dependent shape breaks a whole-model graph and recompiles it as row lengths change, which is why
    compiling the whole model measured no faster than eager here. Blocks see only (rows, length, width)
    tensors; every layer shares one compiled graph, and in-place `Module.compile` keeps parameter names, so
    checkpoints and adapters save as they do uncompiled.
    """
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        block.compile()
    return len(blocks)


# ---------------------------------------------------------------- trainer


class SftTrainer(Trainer):
    """A Trainer that scores only the positions that have a target, counts the real (non-padding) tokens it
    trains on, and optionally adds a KD loss.

    Projecting every position onto a 49k vocabulary and then discarding most of it under label -100 is the
    largest waste in chat SFT, where prompts are long and answers short: with `target_logits_only` the lm_head
    runs only where the next token is an assistant token (transformers' boolean `logits_to_keep`).
    `kd_loss(logits, targets, teacher, num_items_in_batch) -> loss` (logits and targets of the scored
    positions only, in batch order) comes from the distillation module when the data carries teacher top-k
    log-probs; plain cross-entropy otherwise.
    """

    def __init__(self, *args, kd_loss=None, target_logits_only: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd_loss = kd_loss
        self.target_logits_only = target_logits_only
        self.tokens_seen = 0
        for cb in self.callback_handler.callbacks:  # callbacks that read tokens_seen get the trainer
            if hasattr(cb, "bind"):
                cb.bind(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch
        import torch.nn.functional as F

        n_tokens = inputs.pop("n_tokens", None)
        if n_tokens is not None and model.training:
            self.tokens_seen += int(n_tokens)
        teacher = inputs.pop("teacher", None)
        if not self.target_logits_only and teacher is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        nxt = labels[:, 1:]
        has_target = nxt != IGNORE
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = has_target  # position t is scored on token t+1
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits.float()  # (targets in the batch, vocab), in row-major order of `keep`
        targets = nxt[has_target]
        denom = num_items_in_batch if num_items_in_batch is not None else max(len(targets), 1)
        if teacher is not None and self.kd_loss is not None and model.training:
            # Scored tokens with a teacher row get the KD loss; the rest (e.g. a template's end-of-turn text
            # the teacher did not store) plain cross-entropy, over the same denominator. Eval stays plain CE
            # so eval losses compare across runs with and without KD.
            has = teacher["has"].to(logits.device)
            loss = self.kd_loss(logits[has], targets[has], {"ids": teacher["ids"][has], "logprobs":
                                teacher["logprobs"][has]}, denom)
            if (~has).any():
                loss = loss + F.cross_entropy(logits[~has], targets[~has], reduction="sum") / denom
        else:
            loss = F.cross_entropy(logits, targets, reduction="sum") / denom
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's targets; DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------- checkpoints


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its trainer state is written)."""
    found = []
    for p in folder.glob("checkpoint-*"):
        tail = p.name.split("-")[-1]
        if tail.isdigit() and (p / TRAINER_STATE).exists():
            found.append((int(tail), p))
    return [p for _, p in sorted(found)]


def drop_incomplete(folder: Path) -> list[str]:
    """Remove checkpoints a kill left half-written, so the trainer never rotates or loads one."""
    removed = []
    for p in folder.glob("checkpoint-*"):
        if not (p / TRAINER_STATE).exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


# ---------------------------------------------------------------- callbacks


class MetricsLog(TrainerCallback):
    """Every log line the trainer emits, as JSONL with step, tokens/s and elapsed time.

    On resume, lines after the checkpoint's step are dropped first, so the file reads as one clean run.
    """

    def __init__(self, path: Path, resume_step: int, rewrite: bool = True):
        self.path = path
        self.trainer = None
        self.started = time.time()
        self.main = True
        if rewrite and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(k + "\n" for k in kept))

    def bind(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.main = state.is_world_process_zero

    def tokens_per_s(self) -> float:
        seen = self.trainer.tokens_seen if self.trainer is not None else 0
        return seen / max(time.time() - self.started, 1e-9)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.main or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs,
               "tokens_per_s": round(self.tokens_per_s(), 2), "elapsed_s": round(time.time() - self.started, 2)}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class RichProgress(TrainerCallback):
    """A Rich progress bar with the step, the last loss, tokens/s and the ETA (main process only)."""

    def __init__(self, console, metrics: MetricsLog):
        self.console = console
        self.metrics = metrics
        self.progress = None
        self.task = None
        self.loss = float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from slmkit.pipelines.core.progress import LoggedProgress

        self.progress = LoggedProgress(TextColumn("finetune"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                                 TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("finetune steps", total=state.max_steps, completed=state.global_step,
                                           loss="-", tps="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, tps=f"{self.metrics.tokens_per_s():.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class StopAfter(TrainerCallback):
    """Raise after a given step's checkpoint is saved: how tests (and the benchmark) simulate a kill."""

    class Killed(RuntimeError):
        pass

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise StopAfter.Killed(f"stopped after step {state.global_step}")
