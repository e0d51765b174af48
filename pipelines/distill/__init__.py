"""distill: a teacher LLM writes the training data (chat JSONL for finetune), every answer cached so that a
killed or rerun stage never asks for it again.

Mode `generate`: the teacher answers each prompt (optional system prompt, few-shot turns, n samples); bad
answers are re-asked up to `validate_retries` times, then dropped, each reason counted in the report.
Mode `logits`: as generate, then a local `hf` teacher scores its answer and its top-k log-probs per answer
token are stored with the record (see pipelines/kd.py for the format) for logit KD in finetune.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slmkit.pipelines.core import jsonl
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.rundir import write_json
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, StrictModel
from slmkit.pipelines.distill.agent_traces import AgentTraceConfig
from slmkit.pipelines.distill.response_cache import ResponseCache, cache_key
from slmkit.pipelines.distill.teachers import (
    Interrupted,
    RetryableError,
    TeacherConfig,
    TeacherSpec,
    make_teacher,
    parse_spec,
)
from slmkit.pipelines.distill.validators import ValidateConfig, check


class FewShot(StrictModel):
    user: str
    assistant: str


class DistillConfig(StrictModel):
    teacher: TeacherSpec = Field(description="openai:MODEL@BASE_URL (sends no key), hf:PATH or gguf:PATH, or a "
                                             "mapping (with `api_key_env` for an endpoint that needs a key)")
    prompts: InputPath | None = Field(None, description="prompts file; default: curate's output")
    mode: Literal["generate", "logits", "agent"] = Field(
        "generate", description="generate: the teacher's answers; logits: answers plus the teacher's top-k "
                                "log-probs (hf teacher); agent: the teacher runs `agent.workflow`'s tasks and its "
                                "successful runs' steps become the data")
    agent: AgentTraceConfig | None = Field(None, description="mode agent: the workflow, modes and tasks to run")
    system: str | None = Field(None, description="system prompt for the teacher")
    few_shot: list[FewShot] = Field(default_factory=list)
    few_shot_file: InputPath | None = Field(None, description="more few-shot turns: JSONL of {prompt, response}")
    train_context: Literal["prompt", "system", "full"] = Field(
        "system", description="what the training records keep before the answer: the prompt alone, the system "
                              "prompt too, or also the few-shot turns (the teacher always sees all of it)")
    stop: list[str] | None = Field(None, description="stop sequences for the teacher")
    n: int = Field(1, ge=1, le=64, description="answers per prompt")
    temperature: float = Field(0.0, ge=0, description="teacher sampling temperature (0: greedy)")
    max_tokens: int = Field(256, gt=0, description="longest teacher answer, in tokens")
    seed: int | None = Field(None, description="teacher sampling seed, sent with each request")
    limit: int | None = Field(None, gt=0, description="use only the first N prompts")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    validate_retries: int = Field(2, ge=0, description="re-ask an answer that fails validation this many times")
    top_k: int = Field(20, ge=1, le=1000, description="logits mode: teacher log-probs kept per token")
    student: str | None = Field(None, description="logits mode: student model whose tokenizer must match")
    max_failed_share: float = Field(
        0.0, ge=0, le=1, description="share of answers the teacher may fail to give (HTTP errors, timeouts, ...) "
                                     "before the stage fails; answers dropped by validation do not count")

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    def extra_inputs(self) -> list[Path]:
        """mode agent: the workflow's tasks file and its tools' sources, for the stage's fingerprint."""
        if self.mode != "agent" or self.agent is None:
            return []
        from slmkit.pipelines.agent.workflow import workflow_dependencies

        return workflow_dependencies(self.agent.workflow)


# ---------------------------------------------------------------- prompts

def _user_turns(messages: list[dict]) -> list[dict]:
    """A conversation's prompt: everything before its last assistant turn (curate writes whole dialogues)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last]]


def read_prompts(path: Path) -> list[tuple[list[dict], dict]]:
    """(messages, carried fields) per prompt, from JSONL (prompt or messages) or plain text lines."""
    try:
        with Path(path).open(encoding="utf-8") as fh:  # the first line decides the format; read no further here
            first = next((ln for ln in fh if ln.strip()), "")
    except UnicodeDecodeError:
        jsonl.read_text(path)  # raises the error that names FILE:LINE:COLUMN
        raise
    if first.lstrip().startswith("{"):
        out = [_prompt_record(where, rec) for where, _, rec in jsonl.records(path)]
    else:
        lines = jsonl.read_text(path).splitlines()
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
    if config.mode == "agent":
        if config.agent is None:
            raise SlmkitError("distill.agent: mode 'agent' needs an `agent` section (workflow, modes, tasks)")
        with contextlib.ExitStack() as stack:
            tcfg = _served(tcfg, stack, ctx)
            return _agent_traces(config, ctx, tcfg)
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
        tcfg = _served(tcfg, stack, ctx)
        return _generate(config, ctx, tcfg, prompts, shots, params)


def _served(tcfg: TeacherConfig, stack: contextlib.ExitStack, ctx: StageContext) -> TeacherConfig:
    """A `serve:` teacher started on loopback for the stage's length; any other teacher as it is."""
    if not tcfg.serve:
        return tcfg
    from slmkit.pipelines.serving.local_endpoint import local_endpoint

    url, model_id = stack.enter_context(local_endpoint(tcfg.serve, tcfg.delay_ms, tcfg.serve_threads))
    ctx.console.print(f"distill: serving {tcfg.serve} at {url} as the teacher")
    return tcfg.model_copy(update={"base_url": url, "model": tcfg.model or model_id})


def _agent_traces(config: DistillConfig, ctx: StageContext, tcfg: TeacherConfig) -> Outcome:
    """mode agent (pipelines/distill/agent_traces.py). The runs go on in a worker thread, so that Ctrl-C or
    SIGTERM stops the next request while the one in flight is answered and cached, as generate mode does."""
    from slmkit.pipelines.distill import agent_traces

    cache = ResponseCache(ctx.cache / "distill_responses.sqlite")
    stop = threading.Event()
    teacher = make_teacher(tcfg, stop)
    where = f"serve:{tcfg.serve}" if tcfg.serve else str(tcfg.base_url or tcfg.model)
    client = agent_traces.CachingClient(teacher.client, cache, f"{tcfg.model}@{where}", stop)
    done: dict[str, Any] = {}

    def work() -> None:
        try:
            done["result"] = agent_traces.record_traces(config.agent, client, ctx.seed, ctx.console.print)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            done["error"] = exc

    worker = threading.Thread(target=work, name="distill-agent", daemon=True)
    try:
        with _sigterm_as_interrupt():
            worker.start()
            while worker.is_alive():
                worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        ctx.console.print(f"distill: interrupted: no new requests; waiting up to {tcfg.timeout:.0f}s for the one "
                          "in flight to be cached (interrupt again to leave now)")
        worker.join(tcfg.timeout)
        raise
    finally:
        if not worker.is_alive():
            teacher.close()
            cache.close()
    if "error" in done:
        raise done["error"]
    records, report = done["result"]
    report = {"teacher": {"kind": tcfg.kind, "model": tcfg.model, "base_url": tcfg.base_url, "served": tcfg.serve},
              "mode": "agent", **report, "requests_new": client.fresh}
    write_json(ctx.out / "report.json", report)
    if not records:
        raise StageFailed(f"distill: the teacher completed none of the {report['runs']} runs of "
                          f"{config.agent.workflow} (statuses and state differences in {ctx.out / 'report.json'})")
    jsonl.write_jsonl(ctx.out / "train.jsonl", records)
    ctx.console.print(f"distill: {report['kept']}/{report['runs']} teacher runs kept → {len(records)} training "
                      f"records, {client.fresh} new requests")
    return Outcome(outputs={"train": "train.jsonl", "report": "report.json"},
                   metrics={"runs": report["runs"], "kept": report["kept"], "records": len(records),
                            "requests_new": client.fresh})


# ---------------------------------------------------------------- asking the teacher

@dataclass
class JobResult:
    """One (prompt, sample) job: the answer kept, or why there is none."""

    prompt: int
    sample: int
    text: str | None = None
    rejections: list[str] = field(default_factory=list)  # a validation reason per answer refused
    failure: str | None = None  # the kind of request failure (http_500, timeout, ...) that left it unanswered
    error: str | None = None  # the last error's message, for the report
    retried: list[str] = field(default_factory=list)  # the kind of each failed attempt that was sent again
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fresh: int = 0  # answers received from the teacher in this run (not from the cache)


class _Asker:
    """Gets one job's answer, re-asking one that fails validation; each answer is cached the moment it arrives,
    so whatever happens afterwards (a kill, an interrupt, a failed budget) it is never paid for twice."""

    def __init__(self, config: DistillConfig, tcfg: TeacherConfig, prompts: list, shots: list[FewShot],
                 params: dict[str, Any], cache: ResponseCache, teacher: Any, stop: threading.Event):
        self.config, self.tcfg, self.prompts, self.shots = config, tcfg, prompts, shots
        self.params, self.cache, self.teacher, self.stop = params, cache, teacher, stop
        # A served teacher's port changes between runs: its cache entries are keyed by what is served instead.
        # A pool is keyed by its endpoints as a set: listing them in another order re-asks nothing.
        urls = tcfg.base_url
        self.where = (f"serve:{tcfg.serve}" if tcfg.serve else
                      "pool:" + ",".join(sorted(urls)) if isinstance(urls, list) else urls or "")

    def __call__(self, i: int, s: int) -> JobResult | None:
        """The job's result; None when `stop` came first (nothing of it was asked, so nothing is lost)."""
        res = JobResult(i, s)
        msgs = _full_messages(self.config, self.prompts[i][0], self.shots)
        for attempt in range(self.config.validate_retries + 1):
            try:
                text = self._answer(msgs, s, attempt, res)
            except Interrupted:
                return None
            except RetryableError as exc:
                res.failure, res.error = exc.kind, str(exc)
                res.retried += exc.retried
                return res
            reason = check(text, self.config.validate_)
            if reason is None:
                res.text = text
                return res
            res.rejections.append(reason)
        res.error = f"invalid after {self.config.validate_retries + 1} attempts"
        return res

    def _answer(self, msgs: list[dict], s: int, attempt: int, res: JobResult) -> str:
        # Each (sample, attempt) is its own cache entry: a re-ask after a bad answer is a new question.
        key = cache_key(self.tcfg.kind, f"{self.tcfg.model}@{self.where}", self.params, msgs, s * 1000 + attempt)
        hit = self.cache.get(key)
        if hit is not None:
            return hit["text"]
        if self.stop.is_set():  # local teachers have no stop of their own: this is their check between requests
            raise Interrupted("distill is stopping")
        p = dict(self.params)
        if attempt or s:  # vary the seed so a re-ask or a second sample can differ
            p["seed"] = int(self.params.get("seed", 0)) + s * 1000 + attempt
        ans = self.teacher.ask(msgs, p)
        self.cache.put(key, {"text": ans.text, "prompt_tokens": ans.prompt_tokens,
                             "completion_tokens": ans.completion_tokens})
        res.fresh += 1
        res.prompt_tokens += ans.prompt_tokens
        res.completion_tokens += ans.completion_tokens
        res.retried += ans.retried
        return ans.text


class _Workers:
    """`n` daemon threads that take jobs until none is left or `stop` is set.

    Not a ThreadPoolExecutor: leaving its block runs every job still queued (so Ctrl-C kept sending requests),
    and its threads are joined at interpreter exit (so a second Ctrl-C could not leave at once)."""

    def __init__(self, fn: Callable[[int, int], JobResult | None], jobs: list[tuple[int, int]], n: int,
                 stop: threading.Event):
        self._fn, self._stop = fn, stop
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        for job in jobs:
            self._todo.put(job)
        self._threads = [threading.Thread(target=self._work, name=f"distill-{k}", daemon=True)
                         for k in range(max(1, min(n, len(jobs))))]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._todo.get_nowait()
            except queue.Empty:
                return
            try:
                self._done.put((None, self._fn(*job)))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self._stop.set()  # an error that ends the stage (a refused key, a bug): no worker asks further
                self._done.put((exc, None))

    def results(self) -> Iterator[JobResult | None]:
        """Each job's result as it finishes; a worker's error is re-raised here. The main thread waits in short
        slices, never in one unbounded wait, so a signal reaches it at once."""
        while self.busy() or not self._done.empty():
            try:
                exc, res = self._done.get(timeout=0.2)
            except queue.Empty:
                continue
            if exc is not None:
                raise exc
            yield res

    def busy(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for the workers to finish the request each is in; True when all have."""
        deadline = time.monotonic() + seconds
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not self.busy()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler, a container stop) stops distill as Ctrl-C does, keeping the answers in
    flight; Python's default would end the process at once and lose them. Only the main thread may set it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _collect(workers: _Workers, total: int, ctx: StageContext, stop: threading.Event,
             grace: float) -> list[JobResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from slmkit.pipelines.core.progress import LoggedProgress

    results: list[JobResult] = []
    try:
        with LoggedProgress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=ctx.console, transient=True) as bar:
            task = bar.add_task("distill answers", total=total)
            for res in workers.results():
                if res is not None:
                    results.append(res)
                bar.advance(task)
    except BaseException as exc:
        stop.set()  # from here on no new request is sent, and retry waits end
        _let_in_flight_finish(workers, ctx, grace, interrupted=isinstance(exc, KeyboardInterrupt))
        raise
    return results


def _let_in_flight_finish(workers: _Workers, ctx: StageContext, grace: float, interrupted: bool) -> None:
    """Requests already sent are paid for: wait, at most `grace` seconds, for their answers to reach the cache.
    A second Ctrl-C (or SIGTERM) raises out of this wait and leaves at once."""
    busy = workers.busy()
    if interrupted:
        ctx.console.print(f"distill: interrupted: no new requests; waiting up to {grace:.0f}s for the {busy} in "
                          "flight to be cached (interrupt again to leave now)")
    elif busy:
        ctx.console.print(f"distill: stopping: waiting up to {grace:.0f}s for the {busy} requests in flight")
    if busy and not workers.wait(grace):
        ctx.console.print(f"distill: {workers.busy()} requests still unanswered after {grace:.0f}s; leaving them")


def _generate(config: DistillConfig, ctx: StageContext, tcfg: TeacherConfig, prompts: list, shots: list[FewShot],
              params: dict[str, Any]) -> Outcome:
    cache = ResponseCache(ctx.cache / "distill_responses.sqlite")
    stop = threading.Event()
    teacher = make_teacher(tcfg, stop)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(config.n)]
    workers = None
    try:
        with _sigterm_as_interrupt():
            workers = _Workers(_Asker(config, tcfg, prompts, shots, params, cache, teacher, stop), jobs,
                               tcfg.concurrency, stop)
            # An in-flight request ends within about its timeout, so that bounds the wait after an interrupt.
            results = _collect(workers, len(jobs), ctx, stop, grace=tcfg.timeout)
        cached_total = len(cache)
    finally:
        # A worker still in a request after the grace period keeps its teacher and cache: closing a model or a
        # database under a running request could crash it, and the process is leaving anyway.
        if workers is None or not workers.busy():
            teacher.close() if hasattr(teacher, "close") else None
            cache.close()
    return _finish(config, ctx, tcfg, prompts, shots, results, cached_total)


# ---------------------------------------------------------------- results

def _kinds(counts: Counter) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counts.most_common())


def _finish(config: DistillConfig, ctx: StageContext, tcfg: TeacherConfig, prompts: list, shots: list[FewShot],
            results: list[JobResult], cached_total: int) -> Outcome:
    results.sort(key=lambda r: (r.prompt, r.sample))
    answered = [r for r in results if r.text is not None]
    report = _report(config, tcfg, len(prompts), results, cached_total)
    # Written before the checks below, so that a failed stage's folder says why it failed.
    write_json(ctx.out / "report.json", report)
    _check_failure_budget(config, Counter(report["request_failures"]), report["samples"])
    if not answered:
        raise SlmkitError(f"distill: the teacher produced no usable answer for {len(prompts)} prompts "
                          f"(reasons: {report['rejections'] or report['failures'][:1]})")
    records = []
    for r in answered:
        msgs, extra = prompts[r.prompt]
        turns = _full_messages(config, msgs, shots, config.train_context)
        records.append({**extra, "messages": turns + [{"role": "assistant", "content": r.text}]})
    if config.mode == "logits":
        from slmkit.pipelines.distill.logits import add_teacher_topk

        add_teacher_topk(records, tcfg, config, ctx)
    jsonl.write_jsonl(ctx.out / "train.jsonl", records)
    cost = _cost(tcfg, report["usage"]["prompt_tokens"], report["usage"]["completion_tokens"])
    ctx.console.print(_summary(report, cost))
    return Outcome(outputs={"train": "train.jsonl", "report": "report.json"},
                   metrics={k: report[k] for k in ("answered", "dropped", "failed", "requests_new")}
                   | report["usage"] | {"cost_usd": cost})


def _report(config: DistillConfig, tcfg: TeacherConfig, n_prompts: int, results: list[JobResult],
            cached_total: int) -> dict:
    """report.json: what was kept, what validation dropped (by reason), what the teacher failed to answer (by
    kind of failure), the failed attempts retried on the way (by kind), usage and cost."""
    failed = Counter(r.failure for r in results if r.failure)
    n_answered = sum(r.text is not None for r in results)
    usage = {"prompt_tokens": sum(r.prompt_tokens for r in results),
             "completion_tokens": sum(r.completion_tokens for r in results)}
    cost = _cost(tcfg, usage["prompt_tokens"], usage["completion_tokens"])
    return {
        "teacher": {"kind": tcfg.kind, "model": tcfg.model, "base_url": tcfg.base_url, "served": tcfg.serve},  # never the key
        "mode": config.mode, "prompts": n_prompts, "samples": n_prompts * config.n, "answered": n_answered,
        "dropped": len(results) - n_answered - sum(failed.values()),  # no valid answer after every re-ask
        "failed": sum(failed.values()),
        "rejections": dict(Counter(reason for r in results for reason in r.rejections)),
        "request_failures": dict(failed), "retried": dict(Counter(k for r in results for k in r.retried)),
        "max_failed_share": config.max_failed_share,
        "failures": [{"prompt": r.prompt, "sample": r.sample, "reasons": r.rejections, "failure": r.failure,
                      "error": r.error} for r in results if r.text is None][:50],
        "requests_new": sum(r.fresh for r in results), "cache_entries": cached_total, "usage": usage,
        "cost_usd": cost if cost is not None else "unknown (no prices in the teacher config)",
    }


def _summary(report: dict, cost: float | None) -> str:
    notes = []
    if report["dropped"]:
        notes.append(f"{report['dropped']} dropped by validation ({_kinds(Counter(report['rejections']))})")
    if report["failed"]:
        notes.append(f"{report['failed']} not answered ({_kinds(Counter(report['request_failures']))}), within "
                     "distill.max_failed_share")
    return (f"distill: {report['answered']}/{report['samples']} answers kept, " + "".join(f"{n}, " for n in notes)
            + f"{report['requests_new']} new requests, cost {'unknown' if cost is None else f'${cost:.4f}'}")


def _check_failure_budget(config: DistillConfig, failed: Counter, total: int) -> None:
    """Answers the teacher failed to give (not ones validation refused) fail the stage beyond the budget; they
    are not cached, so a rerun asks exactly those again."""
    n = sum(failed.values())
    if n / total <= config.max_failed_share:
        return
    raise StageFailed(f"distill: the teacher failed to answer {n} of {total} requests ({_kinds(failed)}), "
                      f"{n / total:.0%} against distill.max_failed_share = {config.max_failed_share:g}. Every answer "
                      f"received is cached: a rerun asks only the {n} that failed (or raise "
                      "distill.max_failed_share to accept the loss)")
