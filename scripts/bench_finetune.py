"""Benchmark finetune: training throughput of slmkit LoRA against a plain transformers+PEFT loop, and the peak
memory of QLoRA against LoRA. Writes bench-results/finetune.json.

    python scripts/bench_finetune.py                       # SmolLM2-135M-Instruct on the demo tickets
    python scripts/bench_finetune.py --steps 4 --threads 2

Throughput counts real (non-padding) tokens per second of training steps, after one warm-up step, on the
same examples, model, LoRA settings and thread count; each figure is the median over the timed steps of all
rounds (a shared machine gives the odd very slow step, which a mean would let decide the result). The baseline is the loop most people write: batches of
examples padded to the longest in the batch, full logits, the model's own loss. slmkit packs examples into
rows (block-diagonal mask) and projects onto the vocabulary only where there is a target. The two are run
interleaved (baseline, slmkit variants, baseline, …) so that a busy shared machine slows all alike. The
variants show what each choice buys: packing to the longest example (the default), packing into long rows,
and no packing.

Peak memory: each method runs a few steps in its own fresh subprocess; the figure is that process's peak RSS
(VmHWM), which on the CPU includes loading the model (QLoRA quantises while loading, from float32), and
the weights' own footprint (`get_memory_footprint`, 4-bit storage for QLoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "data" / "tickets_eval.jsonl"


def demo_conversations(path: Path) -> list:
    """Chat SFT data from the demo's labelled tickets (prompt → JSON answer), or any SFT JSONL given."""
    from slmkit.pipelines.finetune import sft_data

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if rows and "answer" in rows[0]:
        return [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": json.dumps(r["answer"])}]
                for r in rows]
    return sft_data.read_conversations(path)


def lora_model(path: str, r: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def baseline_round(path: str, examples, batch: int, steps: int, r: int, seed: int) -> list[float]:
    """A plain PEFT loop: shuffled batches padded to the longest example, full logits. Real tokens/s per step."""
    import torch

    model = lora_model(path, r)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rates = []
    for step in range(steps + 1):
        tokens, start = 0, time.perf_counter()
        idx = [order[(step * batch + i) % len(order)] for i in range(batch)]
        width = max(len(examples[i].input_ids) for i in idx)
        ids = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, i in enumerate(idx):
            k = len(examples[i].input_ids)
            ids[row, :k] = torch.tensor(examples[i].input_ids)
            labels[row, :k] = torch.tensor(examples[i].labels)
            mask[row, :k] = 1
            tokens += k
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        rates.append(tokens / (time.perf_counter() - start))
    return rates[1:]  # the first step pays one-off costs (allocations, kernel selection)


def slmkit_round(model_spec: str, data: Path, steps: int, batch_rows: int, max_length: int, r: int,
                 seed: int, **extra) -> tuple[list[float], dict]:
    """The finetune stage itself, timed between the end of its first step and the end of its last."""
    from rich.console import Console
    from transformers import TrainerCallback

    from slmkit.pipelines.core.stage import StageContext
    from slmkit.pipelines.finetune import FinetuneConfig, train

    marks: list[tuple[float, int]] = []  # (time, real tokens so far) at the end of each step

    class Clock(TrainerCallback):
        trainer = None

        def bind(self, trainer):  # SftTrainer hands itself to callbacks that ask
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), self.trainer.tokens_seen))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        (out / ".state").mkdir(parents=True)
        ctx = StageContext(stage="finetune", out=out, state=out / ".state", cache=Path(tmp) / "cache", upstream={},
                           fingerprint="bench", seed=seed, console=Console(quiet=True))
        cfg = FinetuneConfig.model_validate({
            "model": model_spec, "data": str(data), "max_steps": steps + 1, "save_every": 10_000,
            "eval_fraction": 0.0, "keep": "last", "batch_size": batch_rows, "max_length": max_length,
            "lora": {"r": r, "alpha": 2 * r, "dropout": 0.05}, "learning_rate": 2e-4, **extra})
        outcome = train(cfg, ctx, callbacks=[Clock()])
        # the stage's own per-step log: a faster variant must train the same
        logged = [json.loads(line) for line in (ctx.state / "metrics.jsonl").read_text().splitlines() if line]
        losses = [round(row["loss"], 4) for row in logged if "loss" in row]
    rates = [(t1 - t0) and (n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in zip(marks, marks[1:], strict=False)]
    return rates, {"rows": outcome.metrics["train_rows"], "examples": outcome.metrics["train_examples"],
                   "pack_length": outcome.metrics["pack_length"], "losses": losses}


def peak_memory(method: str, model_spec: str, data: Path, steps: int, max_length: int, threads: int) -> dict:
    """Peak RSS of a subprocess that trains `steps` steps with `method`."""
    code = f"""
import sys, tempfile, torch
from pathlib import Path
from rich.console import Console
torch.set_num_threads({threads})
from slmkit.pipelines.finetune import FinetuneConfig, train
from slmkit.pipelines.core.stage import StageContext
tmp = Path(tempfile.mkdtemp()); out = tmp / "out"; (out / ".state").mkdir(parents=True)
ctx = StageContext(stage="finetune", out=out, state=out / ".state", cache=tmp / "c", upstream={{}},
                   fingerprint="mem", console=Console(quiet=True))
cfg = FinetuneConfig.model_validate({{"model": {model_spec!r}, "data": {str(data)!r}, "method": {method!r},
    "max_steps": {steps}, "save_every": 10000, "eval_fraction": 0.0, "keep": "last", "batch_size": 2,
    "max_length": {max_length}}})
o = train(cfg, ctx)
import json, shutil; shutil.rmtree(tmp, ignore_errors=True)
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report its parent's peak.
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
kib = lambda k: int(st[k].split()[0]) / 1024
peak, end = round(kib("VmHWM"), 1), round(kib("VmRSS"), 1)
# What the weights themselves take (4-bit storage for QLoRA), read after the peak so it does not move it.
from slmkit.pipelines.core import models
from slmkit.pipelines.finetune import sft_trainer
m = sft_trainer.load_base(models.resolve({model_spec!r}), {method!r}, "float32", False)
weights = round(m.get_memory_footprint() / 2**20, 1)
print("RESULT", json.dumps({{"peak_rss_mib": peak, "end_rss_mib": end, "model_weights_mib": weights,
                            "final_loss": o.metrics["final_loss"]}}))
"""
    started = time.time()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        return {"error": (res.stderr or res.stdout)[-800:]}
    return {**json.loads(line[0][7:]), "seconds": round(time.time() - started, 1), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=DEMO, help="demo tickets (prompt+answer) or an SFT JSONL")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (after 1 warm-up step)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="baseline examples per step")
    ap.add_argument("--max-length", type=int, default=512, help="slmkit packed row length")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-steps", type=int, default=2)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="time the bf16 variants even on a CPU without native bf16")
    ap.add_argument("--compile", action="store_true", help="also time slmkit LoRA (and bf16 autocast) with "
                    "finetune.torch_compile")
    ap.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                    help="time only these slmkit variants (the plain PEFT loop always runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "finetune.json")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from slmkit.pipelines.core import models
    from slmkit.pipelines.finetune import cpu_has_native_bf16, sft_data

    torch.set_num_threads(args.threads)
    path = models.resolve(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    convs = demo_conversations(args.data)
    examples = sft_data.encode_all(tok, convs, args.max_length, "truncate")
    with tempfile.TemporaryDirectory() as tmp:
        sft_file = Path(tmp) / "sft.jsonl"
        sft_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
        # Rows per step chosen so every side sees about the same real tokens per step as the baseline.
        mean_len = statistics.mean(len(e.input_ids) for e in examples)
        longest = max(len(e.input_ids) for e in examples)
        variants = {  # name -> finetune config changes, packed row length
            "slmkit_lora": ({}, longest),
            f"slmkit_lora_packed_to_{args.max_length}": ({"pack_length": args.max_length}, args.max_length),
            "slmkit_lora_no_packing": ({"packing": False}, mean_len),
        }
        native_bf16 = cpu_has_native_bf16()
        if native_bf16 or args.bf16:
            # Where the CPU multiplies bf16 natively (AMX, AVX512-BF16): autocast keeps float32 weights, LoRA
            # and optimiser; bf16 weights also halve what the frozen base takes. Elsewhere both are emulated.
            variants["slmkit_lora_bf16_autocast"] = ({"autocast": "bfloat16"}, longest)
            variants["slmkit_lora_bf16_weights"] = ({"dtype": "bfloat16"}, longest)
        if args.compile:
            # torch.compile (inductor): the first step compiles and is not timed, as every
            # variant's first step is not; the later steps show what compiled kernels buy.
            for name in [k for k in variants if k in ("slmkit_lora", "slmkit_lora_bf16_autocast")]:
                variants[f"{name}_compiled"] = ({**variants[name][0], "torch_compile": True}, variants[name][1])
        if args.only:
            unknown = sorted(set(args.only) - set(variants))
            absent = [k for k in unknown if "bf16" in k and not (native_bf16 or args.bf16)]
            if absent:
                print(f"--only: {', '.join(absent)}: not timed, this CPU has no native bf16 (--bf16 times it anyway)")
            if set(unknown) - set(absent):
                ap.error(f"--only: unknown variant {', '.join(sorted(set(unknown) - set(absent)))} "
                         f"(choose from {', '.join(variants)})")
            variants = {k: v for k, v in variants.items() if k in args.only}
        runs: dict[str, list[float]] = {"plain_peft_padded": [], **{k: [] for k in variants}}
        info: dict = {}
        for rnd in range(args.rounds):
            runs["plain_peft_padded"] += baseline_round(path, examples, args.batch, args.steps, args.rank, seed=rnd)
            print(f"round {rnd}: plain PEFT loop {statistics.median(runs['plain_peft_padded']):.1f} tok/s", flush=True)
            for name, (extra, row_len) in variants.items():
                rows = max(1, round(args.batch * mean_len / row_len))
                rates, info[name] = slmkit_round(args.model, sft_file, args.steps, rows, args.max_length, args.rank,
                                                 rnd, **extra)
                info[name]["rows_per_step"] = rows
                runs[name] += rates
                print(f"round {rnd}: {name} {statistics.median(runs[name]):.1f} tok/s", flush=True)
        memory = {}
        if not args.skip_memory:
            for method in ("lora", "qlora"):
                memory[method] = peak_memory(method, args.model, sft_file, args.memory_steps, args.max_length,
                                             args.threads)
                print(f"{method}: {memory[method]}", flush=True)
    medians = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    base, slm = medians["plain_peft_padded"], medians.get("slmkit_lora")
    result = {
        "bench": "finetune",
        "model": args.model,
        "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "examples": len(examples),
        "mean_example_tokens": round(mean_len, 1),
        "longest_example_tokens": longest,
        "settings": {"steps_per_round": args.steps, "rounds": args.rounds, "baseline_batch": args.batch,
                     "lora_r": args.rank, "threads": args.threads},
        "throughput_tokens_per_s": medians,
        "per_step_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "speedup": round(slm / base, 3) if slm else None,
        "speedup_by_variant": {k: round(v / base, 3) for k, v in medians.items()},
        "target_speedup": 1.3,
        "meets_target": slm / base >= 1.3 if slm else None,
        "slmkit_variants": info,
        "peak_memory": memory,
        "host": {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
                 "cpus": os.cpu_count(), "native_bf16": native_bf16, "loadavg_at_end": os.getloadavg()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("throughput_tokens_per_s", "speedup", "meets_target")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
