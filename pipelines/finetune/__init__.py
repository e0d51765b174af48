"""finetune: LoRA or QLoRA on the domain data, with checkpoints that make a killed run resume exactly.

    slmkit finetune --model smollm2-135m-instruct --data train.jsonl --out adapter/ --max-steps 100

Setup (tokenizer + chat template → assistant-only labels → packed rows), train (transformers.Trainer with a
PEFT model; checkpoints in ctx.state every `save_every` steps, resumed from the last complete one), save (the
best adapter by eval loss, or the last, with the tokenizer and its chat template, plus metrics.jsonl).
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.rundir import write_json
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, ModelSpec, StrictModel


class LoraSection(StrictModel):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")


class KDSection(StrictModel):
    """Logit distillation: loss = alpha·CE + (1−alpha)·T²·KL(teacher‖student) on stored teacher top-k."""

    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)


class FinetuneConfig(StrictModel):
    model: ModelSpec | None = Field(None, description="base model; default: the recipe's `model`")
    data: InputPath | None = Field(None, description="training JSONL; default: distill's or curate's output")
    eval_data: InputPath | None = Field(None, description="eval JSONL; default: curate's eval, else a held-out split")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share when there is no eval file")
    method: Literal["lora", "qlora"] = Field("lora", description="lora; qlora: the base in 4-bit NF4 (bitsandbytes)")
    lora: LoraSection = Field(default_factory=LoraSection)
    max_steps: int | None = Field(100, gt=0, description="optimizer steps; null: train for `epochs`")
    epochs: float = Field(1.0, gt=0, description="passes over the data (max_steps wins when set)")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate of the adapter")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after warm-up")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    batch_size: int = Field(4, gt=0, description="rows per device per step")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimiser step")
    max_length: int = Field(512, gt=8, description="tokens per example (and per packed row)")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="an example longer than max_length: "
                                                                           "cut it, or leave it out")
    packing: bool = Field(True, description="pack short examples into shared rows (no cross-example attention)")
    pack_length: int | None = Field(None, gt=8, description="packed row length; default: the longest example, "
                                                            "so packing fills what padding would waste without "
                                                            "lengthening attention (measured: bench-finetune)")
    save_every: int = Field(25, gt=0, description="checkpoint (and eval) every N steps")
    keep: Literal["best", "last"] = Field("best", description="adapter to output: best eval loss, or last")
    chat_template: str | None = Field(None, description="None: the model's own; for a base without one: "
                                                        "'chatml', 'gemma' or a Jinja string")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the base weights "
                                                                              "while training (lora)")
    autocast: Literal["none", "bfloat16"] = Field(
        "none", description="run the forward and backward passes under bfloat16 autocast (weights, LoRA and "
                            "optimiser stay float32): fast on CPUs with native bf16 (AMX, AVX512-BF16), slow "
                            "elsewhere; measured by bench-finetune. Off by default: the numbers move with it")
    torch_compile: bool = Field(False, description="compile each decoder layer with torch.compile (inductor); "
                                "the first step pays for compiling. Off by default: "
                                "make bench-finetune-compile measures what it buys on the machine at hand")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, slower "
                                                           "(memory_budget turns it on when needed)")
    memory_budget: str | float | None = Field(
        "auto", description="peak memory per machine: '2.5GB', '900MB', 'auto' (half of what is available when "
                            "the stage starts) or null; the stage estimates the peak and, to stay under it, "
                            "trains in micro-batches with more accumulation (same effective batch and loss), "
                            "then with gradient checkpointing")
    target_logits_only: bool = Field(True, description="compute logits only where there is a target token "
                                                        "(needs a model that takes `logits_to_keep`)")
    seed: int | None = Field(None, description="default: the recipe's seed")
    processes: int = Field(1, ge=1, description="data-parallel training processes (accelerate launch; DDP)")
    kd: KDSection | None = Field(None, description="logit distillation on teacher top-k in the data")
    machines: int = Field(1, ge=1, description="machines to train on, each running `processes` workers")
    machine_rank: int | None = Field(None, ge=0, description="this machine's index (0 writes the outputs); "
                                                            "default: NODE_RANK, GROUP_RANK, SLURM_NODEID or RANK")
    main_address: str | None = Field(None, description="machine 0's address, for machines > 1; "
                                                       "default: MASTER_ADDR")
    main_port: int = Field(29500, gt=0, lt=65536, description="machine 0's rendezvous port; "
                                                             "default: MASTER_PORT, else 29500")

    @model_validator(mode="before")
    @classmethod
    def _launcher_env(cls, data):
        """Unset multi-machine keys come from what a cluster launcher (Slurm, torchrun) exports."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("main_address") is None and os.environ.get("MASTER_ADDR"):
            data["main_address"] = os.environ["MASTER_ADDR"]
        if data.get("main_port") is None and os.environ.get("MASTER_PORT"):
            data["main_port"] = os.environ["MASTER_PORT"]
        return data

    @model_validator(mode="after")
    def _check_machines(self):
        if self.machine_rank is None:
            # Only a multi-machine run reads the env: a stray RANK must not break a single-machine run.
            self.machine_rank = _env_machine_rank() if self.machines > 1 else 0
        if self.machine_rank >= self.machines:
            raise ValueError(f"finetune.machine_rank: {self.machine_rank} must be < finetune.machines "
                             f"({self.machines})")
        if self.machines > 1 and not self.main_address:
            raise ValueError("finetune.main_address: machines > 1 needs machine 0's address "
                             "(set main_address or MASTER_ADDR)")
        return self


def _env_machine_rank() -> int:
    for name in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID", "RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


# ---------------------------------------------------------------- setup


def _split(convs: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(convs) < 2:
        return convs, []
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(convs) * fraction))
    held = set(idx[:n_eval])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def _kd_loss(config: FinetuneConfig):
    """The distillation loss of pipelines/kd.py (issue #5), bound to this config's alpha and temperature."""
    if config.kd is None:
        return None
    from slmkit.pipelines.finetune import kd

    return kd.make_kd_loss(alpha=config.kd.alpha, temperature=config.kd.temperature)


def _teacher_records(path: Path, tokenizer) -> list:
    """(teacher_topk, "file:line") per training record, checked against the student's vocabulary."""
    from slmkit.pipelines.finetune import kd, sft_data

    digest = kd.vocab_digest(tokenizer)
    out = []
    for _, record, where in sft_data.read_conversations(path, with_records=True):
        topk = record.get("teacher_topk")
        if not isinstance(topk, dict):
            raise SlmkitError(f"{where}: finetune.kd is set but the record has no 'teacher_topk' "
                              "(run distill with mode: logits, or remove `kd`)")
        if topk.get("tokenizer") not in (None, digest):
            raise SlmkitError(f"{where}: teacher_topk was made with another vocabulary ({topk.get('tokenizer')}) "
                              f"than the student's ({digest}); logit KD needs the same tokenizer")
        out.append((topk, where))
    return out


def prepare_data(config: FinetuneConfig, ctx: StageContext, tokenizer, max_length: int):
    """Training and eval rows, plus counts for the metrics."""
    from slmkit.pipelines.finetune import sft_data

    train_path = config.data or ctx.first_input("train", ["distill", "curate"])
    if train_path is None:
        raise SlmkitError("finetune.data: no training data (set `data`, or run distill or curate before finetune)")
    eval_path = config.eval_data or ctx.first_input("eval", ["curate"])
    seed = ctx.seed if config.seed is None else config.seed
    train_convs = sft_data.read_conversations(train_path)
    # With KD each record carries its teacher rows; they travel with it through the held-out split.
    teachers = _teacher_records(Path(train_path), tokenizer) if config.kd is not None else [None] * len(train_convs)
    pairs = list(zip(train_convs, teachers, strict=True))
    eval_convs = []
    if config.eval_data is not None:
        eval_convs = sft_data.read_conversations(config.eval_data)
    elif eval_path is not None:
        # curate's eval set may hold bare prompts (answers come from distill, for train only): no loss there.
        eval_convs = sft_data.read_conversations(eval_path, skip_unanswered=True)
        if not eval_convs:
            ctx.console.print(f"finetune: {eval_path} has no responses to score; holding out a split of the data")
            eval_path = None
    if eval_path is None:
        pairs, held = _split(pairs, config.eval_fraction, seed)
        eval_convs = [c for c, _ in held]
    train_convs = [c for c, _ in pairs]
    teachers = [t for _, t in pairs] if config.kd is not None else None
    stats = sft_data.EncodeStats()
    train = sft_data.encode_all(tokenizer, train_convs, max_length, config.overlong, stats, teachers)
    if not train:
        raise SlmkitError(f"{train_path}: no example left to train on ({stats.as_dict()})")
    eval_stats = sft_data.EncodeStats()
    evals = sft_data.encode_all(tokenizer, eval_convs, max_length, config.overlong, eval_stats)
    # SDPA computes the whole row's attention even where the block mask hides it, so rows much longer than
    # the examples cost more in attention than packing saves in padding (scripts/bench_finetune.py measures it).
    longest = max(len(e.input_ids) for e in train + evals)
    pack_length = min(config.pack_length or longest, max_length)
    info = {"train_file": str(train_path), "eval_file": str(eval_path) if eval_path else "held-out split",
            "train": stats.as_dict(), "eval": eval_stats.as_dict(), "pack_length": pack_length}
    return (sft_data.rows_of(train, config.packing, pack_length), sft_data.rows_of(evals, config.packing, pack_length),
            info)


def _warmup_steps(config: FinetuneConfig, n_rows: int, world: int) -> tuple[int, int]:
    """(max_steps, warmup_steps) with max_steps -1 meaning 'train for epochs'."""
    if config.max_steps is not None:
        total = config.max_steps
        max_steps = config.max_steps
    else:
        per_epoch = math.ceil(n_rows / (config.batch_size * config.grad_accum * world))
        total = max(1, math.ceil(per_epoch * config.epochs))
        max_steps = -1
    return max_steps, int(total * config.warmup_ratio)


# ---------------------------------------------------------------- train


def train(config: FinetuneConfig, ctx: StageContext, callbacks=()) -> Outcome:
    """The whole stage; `callbacks` lets tests and benchmarks watch or stop the trainer."""
    import torch
    from transformers import AutoTokenizer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from slmkit.pipelines.core import models
    from slmkit.pipelines.finetune import sft_data, sft_trainer

    spec = config.model or ctx.base_model
    if spec is None:
        raise SlmkitError("finetune.model: no base model (set `model` in the recipe or the finetune section)")
    seed = ctx.seed if config.seed is None else config.seed
    path = models.resolve(spec, log=ctx.console.print)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise SlmkitError(f"finetune.model: cannot load the tokenizer of '{spec}' ({err})") from None
    stop = sft_data.set_chat_template(tokenizer, config.chat_template, str(spec))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, eval_rows, data_info = prepare_data(config, ctx, tokenizer, config.max_length)
    kd_loss = _kd_loss(config)

    ckpt_dir = ctx.state / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        sft_trainer.drop_incomplete(ckpt_dir)
    done = sft_trainer.checkpoints(ckpt_dir)
    resume = done[-1] if done else None
    resume_step = sft_trainer.checkpoint_step(resume) if resume else 0
    if resume:
        ctx.console.print(f"finetune: resuming from step {resume_step} ({resume.name})")

    has_eval = bool(eval_rows)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    max_steps, warmup = _warmup_steps(config, len(train_rows), world)
    plan = _memory_plan(config, path, train_rows, ctx.console)
    if config.autocast == "bfloat16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        ctx.console.print("[yellow]finetune.autocast: this CPU has no native bfloat16 (AMX or AVX512-BF16); "
                          "autocast will emulate it and train slower than float32[/]")
    args = TrainingArguments(
        output_dir=str(ckpt_dir), seed=seed, data_seed=seed, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=warmup, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=plan.micro_batch, gradient_accumulation_steps=plan.grad_accum,
        max_steps=max_steps, num_train_epochs=config.epochs, logging_steps=1, save_strategy="steps",
        save_steps=config.save_every, save_total_limit=2, eval_strategy="steps" if has_eval else "no",
        eval_steps=config.save_every if has_eval else None,
        load_best_model_at_end=has_eval and config.keep == "best",
        metric_for_best_model="eval_loss" if has_eval else None, greater_is_better=False,
        label_names=["labels"], remove_unused_columns=False, prediction_loss_only=True, report_to=[],
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        bf16=(config.dtype == "bfloat16" and torch.cuda.is_available()) or config.autocast == "bfloat16",
        ddp_find_unused_parameters=False,
        # Without use_cpu, accelerate sees no GPU and no CPU request and runs every process as a world of one.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
    )
    torch.manual_seed(seed)  # LoRA's A matrices are drawn at wrap time: same seed, same start
    model = sft_trainer.load_base(path, config.method, config.dtype, plan.checkpointing)
    model = sft_trainer.add_lora(model, config.lora.r, config.lora.alpha, config.lora.dropout,
                                 config.lora.target_modules)
    if config.torch_compile:
        blocks = sft_trainer.compile_blocks(model)
        if blocks:
            ctx.console.print(f"finetune: compiling {blocks} blocks (torch.compile; the first step pays for it)")
        else:
            ctx.console.print("[yellow]finetune.torch_compile: this model names no repeated block (transformers' "
                              "_no_split_modules), so nothing is compiled[/]")
    metrics_path = ctx.state / "metrics.jsonl"
    log = sft_trainer.MetricsLog(metrics_path, resume_step, rewrite=main_process)
    trainer = sft_trainer.SftTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
        data_collator=sft_data.PackedCollator(tokenizer.pad_token_id, block_mask=config.packing),
        processing_class=tokenizer, kd_loss=kd_loss, target_logits_only=config.target_logits_only,
        callbacks=[log, sft_trainer.RichProgress(ctx.console, log), *callbacks],
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    if not trainer.is_world_process_zero():
        return Outcome()
    adapter = ctx.out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)  # with the chat template used in training, for merge and inference
    kept_step = trainer.state.global_step
    if args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        kept_step = sft_trainer.checkpoint_step(Path(trainer.state.best_model_checkpoint))
    meta = {"base_model": spec, "base_path": path, "method": config.method, "kept": config.keep, "stop": stop,
            "kept_step": kept_step, "seed": seed, "data": data_info}
    write_json(adapter / "slmkit-finetune.json", meta)
    shutil.copyfile(metrics_path, ctx.out / "metrics.jsonl")

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    metrics = {
        "steps": trainer.state.global_step, "resumed_from_step": resume_step,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "best_eval_loss": min(evals) if evals else None, "kept_step": kept_step,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "tokens_per_s_session": round(log.tokens_per_s(), 2),
        "train_examples": data_info["train"]["examples"], "train_rows": len(train_rows),
        "truncated": data_info["train"]["truncated"], "dropped_too_long": data_info["train"]["dropped_too_long"],
        "dropped_no_target": data_info["train"]["dropped_no_target"], "eval_examples": data_info["eval"]["examples"],
        "method": config.method, "pack_length": data_info["pack_length"] if config.packing else None,
        "memory_estimate": plan.as_dict(), "peak_rss_mb": _peak_rss_mb(),
    }
    return Outcome(outputs={"adapter": "adapter", "metrics": "metrics.jsonl"}, metrics=metrics)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own test: bf16 matrix kernels (AVX512-BF16 or AMX) on this CPU."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _memory_plan(config: FinetuneConfig, path: str, train_rows: list, console: Any):
    """The micro-batch, accumulation and checkpointing this process trains with, chosen under the budget."""
    from transformers import AutoConfig

    from slmkit.pipelines.finetune import memory

    shape = memory.Shape.of(AutoConfig.from_pretrained(path))
    row_tokens, row_targets = memory.row_extent(train_rows)
    budget = memory.budget_mb(config.memory_budget, config.processes)
    candidates = memory.plans(shape, batch_size=config.batch_size, grad_accum=config.grad_accum,
                              checkpointing=config.gradient_checkpointing, method=config.method,
                              dtype=config.dtype, row_tokens=row_tokens, row_targets=row_targets,
                              lora_r=config.lora.r)
    plan, fits = memory.choose(candidates, budget)
    how = (f"micro-batch {plan.micro_batch} × {plan.grad_accum} accumulated (effective {config.batch_size * config.grad_accum})"
           f"{', gradient checkpointing' if plan.checkpointing else ''}")
    if budget is None:
        console.print(f"finetune: estimated peak {plan.line()}; {how}")
    elif fits:
        console.print(f"finetune: estimated peak {plan.line()}, budget {budget / 1000:.2f} GB: {how}")
    else:
        console.print(f"[yellow]finetune: the smallest plan ({how}) is estimated at {plan.line()}, over the "
                      f"budget of {budget / 1000:.2f} GB (finetune.memory_budget); training anyway[/]")
    return plan


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), in MB; in `slmkit run` it covers the stages before too."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    return None


def run(config: FinetuneConfig, ctx: StageContext) -> Outcome:
    if (config.processes > 1 or config.machines > 1) and "WORLD_SIZE" not in os.environ:
        return _launch(config, ctx)
    return train(config, ctx)


def _launch(config: FinetuneConfig, ctx: StageContext) -> Outcome:
    """Train in `processes` workers under accelerate; this process only waits and reports."""
    from slmkit.pipelines.finetune import launch as finetune_launch

    dump = config.model_dump(mode="json")
    # Workers have no upstream stages: hand them concrete files and the resolved defaults.
    dump["model"] = config.model or ctx.base_model
    dump["data"] = str(config.data or ctx.first_input("train", ["distill", "curate"]) or "")
    eval_path = config.eval_data or ctx.first_input("eval", ["curate"])
    dump["eval_data"] = str(eval_path) if eval_path else None
    if not dump["data"]:
        raise SlmkitError("finetune.data: no training data (set `data`, or run distill or curate before finetune)")
    seed = ctx.seed if config.seed is None else config.seed
    res = finetune_launch.launch(dump, ctx.out, ctx.state, config.processes, seed, ctx.console)
    if config.machine_rank == 0:  # in a folder the machines share, outcome.json is machine 0's to remove
        (ctx.out / finetune_launch.OUTCOME).unlink(missing_ok=True)
    return Outcome(outputs=res["outputs"], metrics={**res["metrics"], "processes": config.processes})
