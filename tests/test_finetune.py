"""finetune on a tiny random Llama: the loss falls, a killed run resumes exactly, QLoRA runs, the verb works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import TrainerCallback

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.finetune import FinetuneConfig, train
from slmkit.pipelines.finetune.sft_trainer import StopAfter


def write_data(path: Path, n: int = 12) -> Path:
    rows = [{"prompt": f"Order {i}: status?", "response": f"Order {i} shipped to Berlin."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_ctx(out: Path) -> StageContext:
    (out / ".state").mkdir(parents=True, exist_ok=True)
    return StageContext(stage="finetune", out=out, state=out / ".state", cache=out.parent / "cache", upstream={},
                        fingerprint="test", console=Console(quiet=True))


def config(model: Path, data: Path, **kw) -> FinetuneConfig:
    base = {"model": str(model), "data": str(data), "max_steps": 12, "save_every": 4, "batch_size": 2,
            "learning_rate": 3e-3, "max_length": 64, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "seed": 3}
    return FinetuneConfig.model_validate({**base, **kw})


def losses(metrics: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_loss_decreases_on_a_memorisable_set(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 8)
    out = tmp_path / "out"
    outcome = train(config(tiny_model_dir, data, max_steps=40, save_every=20, eval_fraction=0.0, keep="last",
                           learning_rate=5e-3, lr_scheduler="constant", lora={"r": 8, "alpha": 16, "dropout": 0.0}),
                    make_ctx(out))
    curve = losses(out / "metrics.jsonl")
    assert len(curve) == 40
    first = sum(curve[s] for s in range(1, 5)) / 4
    last = sum(curve[s] for s in range(37, 41)) / 4
    assert last < 0.85 * first, (first, last)  # 5.6 -> about 4.45 in 40 steps
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "chat_template.jinja").exists()
    assert outcome.outputs == {"adapter": "adapter", "metrics": "metrics.jsonl"}
    assert json.loads((adapter / "slmkit-finetune.json").read_text())["kept_step"] == 40


@pytest.mark.parametrize("extra", [{}, {"grad_accum": 2, "eval_fraction": 0.2, "lr_scheduler": "linear"}])
def test_killed_run_resumes_with_the_same_loss_curve(tiny_model_dir, tmp_path, extra):
    """Dropout on, shuffling on, several epochs: only a full restore of RNG, optimizer, scheduler and data
    position makes the resumed curve match."""
    data = write_data(tmp_path / "d.jsonl", 10)
    full = tmp_path / "full"
    train(config(tiny_model_dir, data, **extra), make_ctx(full))
    killed = tmp_path / "killed"
    with pytest.raises(StopAfter.Killed):
        train(config(tiny_model_dir, data, **extra), make_ctx(killed), callbacks=[StopAfter(8)])
    assert not (killed / "adapter").exists()
    # A checkpoint half-written by the kill must be ignored, not loaded.
    (killed / ".state" / "checkpoints" / "checkpoint-10").mkdir()
    outcome = train(config(tiny_model_dir, data, **extra), make_ctx(killed))
    assert outcome.metrics["resumed_from_step"] == 8
    a, b = losses(full / "metrics.jsonl"), losses(killed / "metrics.jsonl")
    assert sorted(b) == list(range(1, 13))  # one clean curve: the steps after the checkpoint are not doubled
    for step in range(1, 13):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}: {a[step]} vs {b[step]}"
    from safetensors.torch import load_file

    wa = load_file(full / "adapter" / "adapter_model.safetensors")
    wb = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resume_test_can_fail_when_the_seed_differs(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 10)
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(tiny_model_dir, data, max_steps=4), make_ctx(a))
    train(config(tiny_model_dir, data, max_steps=4, seed=4), make_ctx(b))
    assert losses(a / "metrics.jsonl") != losses(b / "metrics.jsonl")


def test_best_adapter_is_kept_by_eval_loss(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 10)
    out = tmp_path / "out"
    outcome = train(config(tiny_model_dir, data, eval_fraction=0.2), make_ctx(out))
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in evals if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12]
    assert outcome.metrics["kept_step"] == min(evals, key=evals.get)


class LinearLayers(TrainerCallback):
    """Records, when training starts, the class of every base linear layer of the model being trained and of its
    weight (the LoRA A/B matrices and the lm_head, which QLoRA keeps in full precision, left out)."""

    def __init__(self):
        self.layers: dict[str, tuple[type, type]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head"):
                self.layers[name] = (type(module), type(module.weight))


def test_qlora_runs_on_cpu(tiny_model_dir, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    data = write_data(tmp_path / "d.jsonl", 6)
    out = tmp_path / "out"
    seen = LinearLayers()
    outcome = train(config(tiny_model_dir, data, method="qlora", max_steps=3, save_every=3, eval_fraction=0.0),
                    make_ctx(out), callbacks=[seen])
    assert outcome.metrics["steps"] == 3 and outcome.metrics["final_loss"] == outcome.metrics["final_loss"]
    # The base really is 4-bit: every projection of the 2 decoder layers (q, k, v, o, gate, up, down) is a
    # bitsandbytes Linear4bit holding Params4bit weights; under method=lora they are plain nn.Linear.
    assert len(seen.layers) == 2 * 7, sorted(seen.layers)
    not_4bit = {n: f"{m.__name__}/{w.__name__}" for n, (m, w) in seen.layers.items()
                if (m, w) != (bnb.nn.Linear4bit, bnb.nn.Params4bit)}
    assert not not_4bit, f"base layers not loaded in 4-bit: {not_4bit}"
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_bad_inputs_are_named(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"oops": 1}\n')
    with pytest.raises(SlmkitError, match=r"bad.jsonl:2"):
        train(config(tiny_model_dir, bad), make_ctx(tmp_path / "o1"))
    with pytest.raises(Exception, match="lora.r"):
        FinetuneConfig.model_validate({"lora": {"r": 0}})


def test_finetune_verb_standalone(tiny_model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    data = write_data(tmp_path / "d.jsonl", 6)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["finetune", "--model", str(tiny_model_dir), "--data", str(data),
                                   "--out", "ft", "--max-steps", "2", "--save-every", "2"])
    assert res.exit_code == 0, res.output
    done = json.loads((tmp_path / "ft" / "DONE.json").read_text())
    assert done["outputs"]["adapter"] == "adapter" and done["metrics"]["steps"] == 2


def test_target_only_logits_give_the_same_loss_as_full_logits(tiny_model_dir, tmp_path):
    from helpers import tiny_tokenizer
    from transformers import AutoModelForCausalLM, TrainingArguments

    from slmkit.pipelines.finetune import sft_data
    from slmkit.pipelines.finetune.sft_trainer import SftTrainer

    tok = tiny_tokenizer()
    convs = [[{"role": "user", "content": f"Order {i}?"}, {"role": "assistant", "content": "Shipped to Berlin" * i}]
             for i in (1, 2, 3)]
    rows = sft_data.pack(sft_data.encode_all(tok, convs, 64, "truncate"), 64)
    batch = sft_data.PackedCollator(tok.pad_token_id)(rows + [[sft_data.encode(tok, convs[0])]])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    n = (batch["labels"][:, 1:] != -100).sum()
    fast = SftTrainer(model=model, args=args, target_logits_only=True).compute_loss(model, dict(batch), num_items_in_batch=n)
    full = SftTrainer(model=model, args=args, target_logits_only=False).compute_loss(model, dict(batch), num_items_in_batch=n)
    assert torch.allclose(fast, full, atol=1e-5), (fast, full)


def test_two_cpu_processes_under_accelerate(tiny_model_dir, tmp_path):
    """processes=2: the stage launches two DDP workers (gloo); each step consumes both workers' batches."""
    from slmkit.pipelines.finetune import run

    data = write_data(tmp_path / "d.jsonl", 10)
    out = tmp_path / "out"
    cfg = config(tiny_model_dir, data, processes=2, max_steps=4, eval_fraction=0.0, max_length=40)
    outcome = run(cfg, make_ctx(out))
    assert outcome.metrics["processes"] == 2 and outcome.metrics["steps"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    rows = outcome.metrics["train_rows"]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # Each process gets half the rows, 2 per step: an epoch is ceil(ceil(rows/2)/2) steps, where one
    # process alone would need ceil(rows/2).
    per_process_steps = math.ceil(math.ceil(rows / 2) / 2)
    assert per_process_steps < math.ceil(rows / 2)
    assert first["epoch"] == pytest.approx(1 / per_process_steps, abs=1e-3)


def test_qlora_without_bitsandbytes_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    from slmkit.pipelines.finetune import sft_trainer

    monkeypatch.setattr(sft_trainer, "bitsandbytes_problem", lambda: "bitsandbytes cannot be loaded (test)")
    data = write_data(tmp_path / "d.jsonl", 4)
    with pytest.raises(SlmkitError, match="method=qlora: bitsandbytes cannot be loaded.*use method: lora"):
        train(config(tiny_model_dir, data, method="qlora"), make_ctx(tmp_path / "o"))


def test_epochs_when_max_steps_is_null(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 6)
    outcome = train(config(tiny_model_dir, data, max_steps=None, epochs=2, eval_fraction=0.0, max_length=40),
                    make_ctx(tmp_path / "o"))
    assert outcome.metrics["steps"] == 2 * math.ceil(outcome.metrics["train_rows"] / 2)


@pytest.mark.slow  # three CLI processes (about 20 s); the in-process kill test above covers the logic fast
def test_sigkilled_process_resumes_from_its_last_complete_checkpoint(tiny_model_dir, tmp_path):
    """A real kill (SIGKILL, at whatever point it lands) of `slmkit finetune`; the rerun matches a clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_data(tmp_path / "d.jsonl", 10)
    args = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "60", "--save-every", "10",
            "--batch-size", "2", "--seed", "5", "--lora-r", "4"]
    cli = [sys.executable, "-c", "from slmkit.cli.app import main; main()", "finetune"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli + args + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(cli + args + ["--out", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run.partial" / ".state" / "checkpoints"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if any(p.name in ("checkpoint-20", "checkpoint-30") for p in ckpts.glob("checkpoint-*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "DONE.json").exists()

    subprocess.run(cli + args + ["--out", str(tmp_path / "run")], check=True, env=env, capture_output=True)
    done = json.loads((tmp_path / "run" / "DONE.json").read_text())
    assert done["metrics"]["resumed_from_step"] >= 10
    a, b = losses(tmp_path / "ref" / "metrics.jsonl"), losses(tmp_path / "run" / "metrics.jsonl")
    assert sorted(b) == list(range(1, 61))
    for step in range(1, 61):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step


def test_upstream_eval_of_bare_prompts_falls_back_to_a_held_out_split(tiny_model_dir, tmp_path):
    from slmkit.pipelines.core.stage import StageResult

    data = write_data(tmp_path / "d.jsonl", 10)
    cur = tmp_path / "curate"
    cur.mkdir()
    (cur / "eval.jsonl").write_text(json.dumps({"prompt": "Order 3: status?"}) + "\n")
    ctx = make_ctx(tmp_path / "o")
    ctx.upstream = {"curate": StageResult("curate", cur, {"eval": "eval.jsonl"})}
    outcome = train(config(tiny_model_dir, data, max_steps=2, save_every=2, eval_fraction=0.2), ctx)
    assert outcome.metrics["eval_examples"] == 2 and outcome.metrics["train_examples"] == 8
    # Given explicitly, the same file is an error that names it.
    with pytest.raises(SlmkitError, match=r"eval.jsonl:1: a prompt without a response"):
        train(config(tiny_model_dir, data, eval_data=str(cur / "eval.jsonl")), make_ctx(tmp_path / "o2"))


def kd_data(model_dir: Path, path: Path, n: int = 8, drop_tail: int = 0) -> Path:
    """Chat records with teacher top-k (kd.py format) taken from a real forward pass of `model_dir`."""
    from helpers import tiny_tokenizer
    from transformers import AutoModelForCausalLM

    from slmkit.pipelines.finetune import kd, sft_data

    tok = tiny_tokenizer()
    teacher = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lines = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Order {i}: status?"},
                {"role": "assistant", "content": f"Order {i} shipped to Berlin."}]
        ex = sft_data.encode(tok, msgs)
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([ex.input_ids])).logits[0]
        scored = [j for j in range(1, len(ex.labels)) if ex.labels[j] != -100]
        ids, lps = kd.teacher_topk_from_logits(logits[[j - 1 for j in scored]], k=5)
        if drop_tail:
            ids, lps = ids[:-drop_tail], lps[:-drop_tail]
        topk = kd.encode_topk(ids, lps, len(tok), kd.vocab_digest(tok))
        lines.append(json.dumps({"messages": msgs, "teacher_topk": topk}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("drop_tail", [0, 2])
def test_logit_kd_trains_on_teacher_topk(tiny_model_dir, tmp_path, drop_tail):
    """KD data from the base itself: the teacher's top-1 is the student's own argmax, so rows are aligned
    when the true-token-in-top-k rate is what the model gives; with alpha=0 and the teacher being the
    starting student, the first KD loss is ~0 (KL of a distribution with itself)."""
    data = kd_data(tiny_model_dir, tmp_path / "kd.jsonl", drop_tail=drop_tail)
    out = tmp_path / "out"
    outcome = train(config(tiny_model_dir, data, max_steps=3, save_every=3, eval_fraction=0.25,
                           kd={"alpha": 0.0, "temperature": 2.0}, lora={"r": 4, "alpha": 8, "dropout": 0.0}),
                    make_ctx(out))
    first = losses(out / "metrics.jsonl")[1]
    if drop_tail == 0:
        assert abs(first) < 1e-3, first  # student == teacher at step 1: KL 0, and CE weighted by alpha=0
    else:
        assert first > 0.1  # the tail tokens without a teacher row get plain cross-entropy
    assert outcome.metrics["steps"] == 3
    # Same data, no KD: the step-1 loss is the plain cross-entropy, clearly not 0.
    plain = train(config(tiny_model_dir, data, max_steps=1, save_every=1, eval_fraction=0.25),
                  make_ctx(tmp_path / "plain"))
    assert plain.metrics["first_loss"] > 1.0


def test_kd_without_teacher_rows_is_named(tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 4)
    with pytest.raises(SlmkitError, match=r"d.jsonl:1: finetune.kd is set but the record has no 'teacher_topk'"):
        train(config(tiny_model_dir, data, kd={"alpha": 0.5}), make_ctx(tmp_path / "o"))


def test_torch_compile_compiles_each_decoder_block_and_keeps_the_adapters_names(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """finetune.torch_compile compiles each decoder layer in place, not the whole model (whose boolean
    logits_to_keep breaks a graph), and the adapter saves under the names it has uncompiled. The real compile
    is measured by bench-finetune-compile (minutes on 2 cores), so here torch.compile is recorded and hands
    back what it was given."""
    from safetensors import safe_open

    compiled = []

    def record(fn, **kwargs):
        compiled.append(type(getattr(fn, "__self__", fn)).__name__)  # Module.compile passes its bound _call_impl
        return fn

    monkeypatch.setattr(torch, "compile", record)
    data = write_data(tmp_path / "d.jsonl", 8)
    train(config(tiny_model_dir, data, max_steps=2, eval_fraction=0.0, keep="last"), make_ctx(tmp_path / "plain"))
    assert compiled == []
    train(config(tiny_model_dir, data, max_steps=2, eval_fraction=0.0, keep="last", torch_compile=True),
          make_ctx(tmp_path / "out"))
    assert compiled == ["LlamaDecoderLayer", "LlamaDecoderLayer"]  # the tiny model's two layers

    def names(run):
        with safe_open(str(tmp_path / run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            return sorted(f.keys())
    assert names("out") == names("plain") and names("plain")
