"""distill: a teacher LLM writes the training data (chat JSONL for finetune), every answer cached so that a
killed or rerun stage never asks for it again.

Mode `generate`: the teacher answers each prompt (optional system prompt, few-shot turns, n samples); bad
answers are re-asked up to `validate_retries` times, then dropped, each reason counted in the report.
Mode `logits`: as generate, then a local `hf` teacher scores its answer and its top-k log-probs per answer
token are stored with the record (see pipelines/kd.py for the format) for logit KD in finetune.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from slmkit.pipelines import jsonl
from slmkit.pipelines.errors import SlmkitError
from slmkit.pipelines.response_cache import ResponseCache, cache_key
from slmkit.pipelines.stage import Outcome, StageContext
from slmkit.pipelines.teachers import Answer, RetryableError, TeacherConfig, make_teacher, parse_spec
from slmkit.pipelines.types import InputPath, StrictModel
from slmkit.pipelines.validators import ValidateConfig, check


class FewShot(StrictModel):
    user: str
    assistant: str


class DistillConfig(StrictModel):
    teacher: str | TeacherConfig = Field(description="openai:MODEL@BASE_URL, hf:PATH or gguf:PATH, or a mapping")
    prompts: InputPath | None = Field(None, description="prompts file; default: curate's output")
    mode: Literal["generate", "logits"] = "generate"
    system: str | None = Field(None, description="system prompt for the teacher")
    few_shot: list[FewShot] = Field(default_factory=list)
    few_shot_file: InputPath | None = Field(None, description="more few-shot turns: JSONL of {prompt, response}")
    train_context: Literal["prompt", "system", "full"] = Field(
        "system", description="what the training records keep before the answer: the prompt alone, the system "
                              "prompt too, or also the few-shot turns (the teacher always sees all of it)")
    stop: list[str] | None = Field(None, description="stop sequences for the teacher")
    n: int = Field(1, ge=1, le=64, description="answers per prompt")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(256, gt=0)
    seed: int | None = None
    limit: int | None = Field(None, gt=0, description="use only the first N prompts")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    validate_retries: int = Field(2, ge=0, description="re-ask an answer that fails validation this many times")
    top_k: int = Field(20, ge=1, le=1000, description="logits mode: teacher log-probs kept per token")
    student: str | None = Field(None, description="logits mode: student model whose tokenizer must match")

    model_config = {**StrictModel.model_config, "populate_by_name": True}


# ---------------------------------------------------------------- prompts

def _user_turns(messages: list[dict]) -> list[dict]:
    """A conversation's prompt: everything before its last assistant turn (curate writes whole dialogues)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last]]


def read_prompts(path: Path) -> list[tuple[list[dict], dict]]:
    """(messages, carried fields) per prompt, from JSONL (prompt or messages) or plain text lines."""
    with Path(path).open(encoding="utf-8") as fh:  # the first line decides the format; read no further here
        first = next((ln for ln in fh if ln.strip()), "")
    if first.lstrip().startswith("{"):
        out = [_prompt_record(where, rec) for where, _, rec in jsonl.records(path)]
    else:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        out = [([{"role": "user", "content": ln.strip()}], {}) for ln in lines if ln.strip()]
    if not out:
        raise SlmkitError(f"{path}: no prompts")
    return out


def _prompt_record(where: str, rec: dict) -> tuple[list[dict], dict]:
    if isinstance(rec.get("messages"), list):
        msgs = rec.pop("messages")
        if not all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in msgs):
            raise SlmkitError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        msgs = _user_turns(msgs)
    elif isinstance(rec.get("prompt"), str) and rec["prompt"].strip():
        msgs = [{"role": "user", "content": rec.pop("prompt")}]
    else:
        raise SlmkitError(f"{where}: needs a 'prompt' string or a 'messages' list")
    rec.pop("response", None)  # curate's answer is replaced by the teacher's
    if not msgs:
        raise SlmkitError(f"{where}: the conversation has no turn before its answer")
    return msgs, rec


def read_shots(path: Path) -> list[FewShot]:
    """Few-shot pairs from JSONL, read by the same rules as bench's few-shot prompts (jsonl.few_shot_pairs)."""
    return [FewShot(user=u, assistant=a) for u, a in jsonl.few_shot_pairs(path)]


def _full_messages(config: DistillConfig, msgs: list[dict], shots: list[FewShot],
                   context: str = "full") -> list[dict]:
    head = [{"role": "system", "content": config.system}] if config.system and context != "prompt" else []
    turns = [t for s in shots for t in ({"role": "user", "content": s.user},
                                        {"role": "assistant", "content": s.assistant})]
    return head + (turns if context == "full" else []) + msgs


# ---------------------------------------------------------------- run

def _cost(tcfg: TeacherConfig, tin: int, tout: int) -> float | None:
    if tcfg.price_input_per_1m is None or tcfg.price_output_per_1m is None:
        return None  # unknown, not zero
    return tin / 1e6 * tcfg.price_input_per_1m + tout / 1e6 * tcfg.price_output_per_1m


def run(config: DistillConfig, ctx: StageContext) -> Outcome:
    tcfg = parse_spec(config.teacher)
    if config.mode == "logits" and tcfg.kind != "hf":
        raise SlmkitError("distill.mode: 'logits' needs a local hf teacher (its token probabilities); "
                          f"this teacher is '{tcfg.kind}'")
    path = config.prompts or ctx.first_input("train", ["curate"])
    if path is None:
        raise SlmkitError("distill.prompts: no prompts (set `prompts`, or run curate before distill)")
    prompts = read_prompts(Path(path))
    if config.limit:
        prompts = prompts[: config.limit]

    shots = config.few_shot + (read_shots(config.few_shot_file) if config.few_shot_file else [])
    params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if config.seed is not None:
        params["seed"] = config.seed
    if config.stop:
        params["stop"] = config.stop
    with contextlib.ExitStack() as stack:
        if tcfg.serve:
            from slmkit.pipelines.local_endpoint import local_endpoint

            url, model_id = stack.enter_context(local_endpoint(tcfg.serve, tcfg.delay_ms, tcfg.serve_threads))
            ctx.console.print(f"distill: serving {tcfg.serve} at {url} as the teacher")
            tcfg = tcfg.model_copy(update={"base_url": url, "model": tcfg.model or model_id})
        return _generate(config, ctx, tcfg, prompts, shots, params)


def _generate(config: DistillConfig, ctx: StageContext, tcfg: TeacherConfig, prompts: list, shots: list[FewShot],
              params: dict[str, Any]) -> Outcome:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # A served teacher's port changes between runs: its cache entries are keyed by what is served instead.
    where = f"serve:{tcfg.serve}" if tcfg.serve else tcfg.base_url or ""
    cache = ResponseCache(ctx.cache / "distill_responses.sqlite")
    teacher = make_teacher(tcfg)
    counts: Counter = Counter()
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    failures: list[dict] = []
    results: dict[tuple[int, int], str] = {}

    def one(i: int, s: int) -> tuple[int, int, str | None, list[str], int, int, int, str | None]:
        msgs = _full_messages(config, prompts[i][0], shots)
        reasons: list[str] = []
        tin = tout = fresh = 0
        for attempt in range(config.validate_retries + 1):
            # Each (sample, attempt) is its own cache entry: a re-ask after a bad answer is a new question.
            key = cache_key(tcfg.kind, f"{tcfg.model}@{where}", params, msgs, s * 1000 + attempt)
            hit = cache.get(key)
            if hit is None:
                p = dict(params)
                if attempt or s:  # vary the seed so a re-ask or a second sample can differ
                    p["seed"] = int(params.get("seed", 0)) + s * 1000 + attempt
                try:
                    ans: Answer = teacher.ask(msgs, p)
                except RetryableError as exc:
                    return i, s, None, reasons + ["request_failed"], tin, tout, fresh, str(exc)
                hit = {"text": ans.text, "prompt_tokens": ans.prompt_tokens,
                       "completion_tokens": ans.completion_tokens}
                cache.put(key, hit)
                fresh += 1
                tin += ans.prompt_tokens
                tout += ans.completion_tokens
            reason = check(hit["text"], config.validate_)
            if reason is None:
                return i, s, hit["text"], reasons, tin, tout, fresh, None
            reasons.append(reason)
        return i, s, None, reasons, tin, tout, fresh, f"invalid after {config.validate_retries + 1} attempts"

    jobs = [(i, s) for i in range(len(prompts)) for s in range(config.n)]
    fresh_total = 0
    try:
        with Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=ctx.console, transient=True) as bar, \
                ThreadPoolExecutor(max_workers=tcfg.concurrency) as pool:
            task = bar.add_task("answers", total=len(jobs))
            for fut in as_completed([pool.submit(one, i, s) for i, s in jobs]):
                i, s, text, reasons, tin, tout, fresh, err = fut.result()
                counts.update(reasons)
                usage["prompt_tokens"] += tin
                usage["completion_tokens"] += tout
                fresh_total += fresh
                if text is None:
                    failures.append({"prompt": i, "sample": s, "reasons": reasons, "error": err})
                else:
                    results[(i, s)] = text
                bar.advance(task)
    finally:
        teacher.close() if hasattr(teacher, "close") else None
        cached_total = len(cache)
        cache.close()

    records = []
    for (i, _sample), text in sorted(results.items()):
        msgs, extra = prompts[i]
        records.append({**extra, "messages": _full_messages(config, msgs, shots, config.train_context) + [{"role": "assistant", "content": text}]})
    if config.mode == "logits":
        from slmkit.pipelines.distill_logits import add_teacher_topk

        add_teacher_topk(records, tcfg, config, ctx)
    if not records:
        raise SlmkitError(f"distill: the teacher produced no usable answer for {len(prompts)} prompts "
                          f"(reasons: {dict(counts) or failures[:1]})")

    tmp = ctx.out / "train.jsonl.part"
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.rename(ctx.out / "train.jsonl")
    cost = _cost(tcfg, usage["prompt_tokens"], usage["completion_tokens"])
    report = {
        "teacher": {"kind": tcfg.kind, "model": tcfg.model, "base_url": tcfg.base_url, "served": tcfg.serve},  # never the key
        "mode": config.mode, "prompts": len(prompts), "samples": len(jobs), "answered": len(records),
        "dropped": len(failures), "rejections": dict(counts), "failures": failures[:50],
        "requests_new": fresh_total, "cache_entries": cached_total,
        "usage": usage, "cost_usd": cost if cost is not None else "unknown (no prices in the teacher config)",
    }
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2))
    ctx.console.print(f"distill: {len(records)}/{len(jobs)} answers kept, {fresh_total} new requests, "
                      f"cost {'unknown' if cost is None else f'${cost:.4f}'}")
    return Outcome(outputs={"train": "train.jsonl", "report": "report.json"},
                   metrics={"answered": len(records), "dropped": len(failures), "requests_new": fresh_total,
                            **usage, "cost_usd": cost})
