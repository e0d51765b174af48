"""bench: quality, latency, throughput, memory and cost of several targets on the same prompts, side by side.

    targets ──(all loaded at once, local ones each in a child process; asked item by item,
               A B C D A B C D …, so load changes fall on all alike)──▶ per-request records
            ──▶ speed (bench_speed) · quality (evals.metrics) · cost (bench_cost)
            ──▶ bench.json, samples.jsonl, report.md + plots (bench_report)
A request that fails is recorded and the target goes on; a target that fails is reported and the others still
run; the stage fails only when every target failed.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slmkit.evals.metrics import METRICS
from slmkit.evals.tasks import Item, TaskConfig, load_few_shot, load_items
from slmkit.pipelines.bench.cost import CostConfig, cost_figures
from slmkit.pipelines.bench.interleaved import measure
from slmkit.pipelines.bench.speed import speed_stats
from slmkit.pipelines.bench.targets import Target, TargetConfig, size_mb
from slmkit.pipelines.core import machine
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.jsonl import write_jsonl
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import StrictModel


class LmEvalConfig(StrictModel):
    tasks: list[str] = Field(min_length=1, description="lm-eval task names in evals/lm_eval/, or task YAML paths")
    targets: list[str] | None = Field(None, description="labels of the targets to run them on (default: every "
                                                        "hf and gguf target; endpoints give no log-probs)")
    limit: int | None = Field(None, gt=0, description="items per task")

    @field_validator("tasks")
    @classmethod
    def _task_files(cls, tasks: list[str], info: ValidationInfo) -> list[str]:
        """A task YAML path is read against the recipe's folder, as every path in a recipe is, and must exist
        (slmkit validate lists the code such a file would import: it must be the file that runs)."""
        base = Path((info.context or {}).get("base_dir") or Path.cwd())
        out = []
        for i, spec in enumerate(tasks):
            if Path(spec).suffix in (".yaml", ".yml"):
                path = (base / Path(spec).expanduser()).resolve()
                if not path.is_file():
                    raise ValueError(f"entry {i} ('{spec}'): no task file at {path}")
                spec = str(path)
            out.append(spec)
        return out


class BenchConfig(StrictModel):
    targets: list[TargetConfig] = Field(default_factory=list, description="gguf:PATH, hf:PATH, openai:MODEL@BASE_URL "
                                        "or mappings; empty: the upstream quantize GGUFs (else merge's model)")
    task: TaskConfig = Field(default_factory=TaskConfig)
    baseline: str | None = Field(None, description="label of the target quality retention is measured against "
                                                   "(default: the first openai target, else the first target)")
    warmup: int = Field(1, ge=0, description="requests per target before timing starts (not counted)")
    repeats: int = Field(1, ge=1, description="timed passes over the task's prompts")
    cost: CostConfig = Field(default_factory=CostConfig)
    lm_eval: LmEvalConfig | None = Field(None, description="lm-eval tasks (log-likelihood) run through lm-eval's "
                                                           "own API on local targets")

    @model_validator(mode="after")
    def _labels(self):
        labels = [t.default_label() for t in self.targets]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"two targets share the label {', '.join(dupes)}; give each a `label`")
        for ref in [self.baseline, *(t.reference for t in self.targets)]:
            if ref is not None and self.targets and ref not in labels:
                raise ValueError(f"'{ref}' is not a target label (labels: {', '.join(labels)})")
        kinds = {t.default_label(): t.kind for t in self.targets}
        for name in (self.lm_eval.targets or []) if self.lm_eval else []:
            if self.targets and name not in kinds:
                raise ValueError(f"lm_eval.targets: '{name}' is not a target label (labels: {', '.join(labels)})")
            if kinds.get(name) == "openai":
                raise ValueError(f"lm_eval.targets: '{name}' is an endpoint; lm-eval's log-likelihood tasks need "
                                 "an in-process hf or gguf model")
        return self


def wants_lm_eval(config: BenchConfig, spec: TargetConfig) -> bool:
    if config.lm_eval is None or spec.kind == "openai":
        return False
    return config.lm_eval.targets is None or spec.default_label() in config.lm_eval.targets


def lm_eval_scores(config: BenchConfig, spec: TargetConfig, location: str) -> dict[str, Any]:
    """lm-eval's figures for one target, or the reason there are none: a broken task is that target's problem."""
    from slmkit.evals.lm_eval_run import run_lm_eval

    try:
        scores = run_lm_eval(spec.kind, Path(location), config.lm_eval.tasks, limit=config.lm_eval.limit,
                             n_threads=spec.n_threads)
        return {"lm_eval": {task: {m: round(v, 4) if isinstance(v, float) else v for m, v in figs.items()}
                            for task, figs in scores.items()}}
    except Exception as exc:  # noqa: BLE001 - recorded on the target, the other figures stand
        return {"lm_eval_error": f"{type(exc).__name__}: {exc}"[:1000]}


def default_targets(ctx: StageContext) -> list[TargetConfig]:
    """`bench: {}` benchmarks what the run made: every quantize GGUF, or else the merged HF model."""
    res = ctx.upstream.get("quantize")
    found = [TargetConfig(kind="gguf", **{"from": f"quantize.{k}"}) for k, rel in (res.outputs if res else {}).items()
             if rel.endswith(".gguf")]
    if not found and "merge" in ctx.upstream:
        found = [TargetConfig(kind="hf", **{"from": "merge.model"})]
    if not found:
        raise SlmkitError("bench.targets: no targets given and no upstream quantize or merge output to bench")
    return found


def baseline_label(config: BenchConfig, specs: list[TargetConfig]) -> str:
    if config.baseline:
        return config.baseline
    endpoints = [t.default_label() for t in specs if t.kind == "openai"]
    return endpoints[0] if endpoints else specs[0].default_label()


@contextlib.contextmanager
def ready(spec: TargetConfig, ctx: StageContext) -> Iterator[tuple[Target, dict]]:
    """The target with its paths resolved, and a server running for `serve`; yields (target, facts for reports)."""
    prefix = ([{"role": "system", "content": spec.system}] if spec.system else []) + \
        (load_few_shot(spec.few_shot) if spec.few_shot else [])
    common = dict(label=spec.default_label(), kind=spec.kind, api=spec.api, messages_prefix=prefix,
                  n_threads=spec.n_threads, n_ctx=spec.n_ctx, prompt_cache=spec.prompt_cache,
                  from_scratch=spec.from_scratch,
                  api_key_env=spec.api_key_env, tokenizer=spec.tokenizer, timeout=spec.timeout)
    facts: dict[str, Any] = {"api": spec.api, "few_shot_turns": len(prefix) // 2}
    if spec.kind == "openai" and spec.serve:
        from slmkit.pipelines.serving.local_endpoint import local_endpoint

        with local_endpoint(spec.serve, delay_ms=spec.delay_ms, n_threads=spec.n_threads,
                            prompt_cache=spec.prompt_cache, from_scratch=spec.from_scratch) as (base_url, model_id):
            facts["served"] = {"model": spec.serve, "delay_ms": spec.delay_ms, "host": "127.0.0.1"}
            yield Target(location=base_url, model=spec.model or model_id, **common), facts
        return
    if spec.kind == "openai":
        facts["base_url"] = spec.base_url
        yield Target(location=spec.base_url, model=spec.model, per_endpoint=spec.per_endpoint_concurrency,
                     **common), facts
        return
    if spec.from_:
        stage, key = spec.from_.split(".")
        location = str(ctx.input(stage, key))
    elif spec.path is not None:
        location = str(spec.path)
    elif spec.kind == "gguf":
        from slmkit.pipelines.serving.local_endpoint import served_gguf

        try:
            location = str(served_gguf(spec.model))  # a known model's cached F16 export, as `serve` uses
        except SlmkitError as exc:
            raise SlmkitError(f"bench.targets[{spec.default_label()}].model: {exc}") from None
    else:
        from slmkit.pipelines.core.models import check_model_spec, resolve

        try:
            location = resolve(check_model_spec(spec.model))
        except ValueError as exc:
            raise SlmkitError(f"bench.targets[{spec.default_label()}].model: {exc}") from None
    if spec.kind == "gguf" and not Path(location).is_file():
        raise SlmkitError(f"bench.targets[{spec.default_label()}]: no GGUF file at {location}")
    facts["model"] = location
    yield Target(location=location, model=None, **common), facts


def _note(spec: TargetConfig) -> str | None:
    """Served baselines always say what they are: a local model standing in for a cloud API, and its delay."""
    if not spec.serve:
        return spec.note
    standin = f"local stand-in for a cloud API: {spec.serve} served on 127.0.0.1, +{spec.delay_ms} ms per request"
    return f"{spec.note} ({standin})" if spec.note else standin


def score(records: list[dict], items: list[Item], metric: str) -> tuple[dict[str, Any], list[dict]]:
    """Quality on the first timed pass (greedy, so later passes repeat it); a failed request scores 0."""
    scorer = METRICS[metric]
    by_id = {r["id"]: r for r in records if r["pass"] == 0}
    samples, values = [], []
    field_hits: dict[str, list[bool]] = {}
    invalid = 0
    for item in items:
        rec = by_id.get(item.id, {"error": "not run"})
        sample: dict[str, Any] = {"id": item.id}
        if "error" in rec:
            sample.update(output=None, score=0.0, error=rec["error"])
            values.append(0.0)
            if isinstance(item.answer, dict):
                for k in item.answer:
                    field_hits.setdefault(k, []).append(False)
        else:
            s = scorer(rec["text"], item.answer)
            sample.update(output=rec["text"], score=round(s.value, 4), prompt_tokens=rec["prompt_tokens"],
                          completion_tokens=rec["completion_tokens"], token_source=rec["token_source"],
                          ttft_ms=None if rec["ttft_s"] is None else round(rec["ttft_s"] * 1000, 2))
            if s.fields:
                sample["fields"] = s.fields
                for k, ok in s.fields.items():
                    field_hits.setdefault(k, []).append(ok)
            if s.invalid_json:
                sample["invalid_json"] = True
                invalid += 1
            values.append(s.value)
        samples.append(sample)
    quality: dict[str, Any] = {"quality": round(sum(values) / len(values), 4)}
    if metric == "json_fields":
        quality["invalid_json"] = invalid
        quality["field_accuracy"] = {k: round(sum(v) / len(v), 4) for k, v in field_hits.items()}
    return quality, samples


def _errors(result) -> dict[str, Any]:
    failed = [r["error"] for r in result.records if "error" in r]
    first = list(dict.fromkeys(failed))[:3]
    out = {"count": len(failed), "first": first, "warmup": result.warmup_errors}
    if result.failed:  # the worker died part way: the requests it never ran count as failed above
        out["worker"] = result.failed
    return out


def _check_answers(items: list[Item], metric: str, where: str) -> None:
    if metric != "json_fields":
        return
    from slmkit.evals.metrics import first_json_object

    for item in items:
        ok = isinstance(item.answer, dict) or (isinstance(item.answer, str) and first_json_object(item.answer))
        if not ok:
            raise SlmkitError(f"{where}: item '{item.id}': metric json_fields needs a JSON object as the answer")


def _injected_delay_s(spec: TargetConfig) -> float:
    """The fixed wait a served stand-in adds before its first byte (a network round trip stood in for)."""
    return spec.delay_ms / 1000 if spec.kind == "openai" and spec.serve else 0.0


def paired_series(records: list[dict], delay_s: float) -> dict[str, list[float | None]]:
    """Per request, in the order every target was asked (pass by pass, item by item): the time to first token
    without any injected delay, and the decode speed. `bench --check` divides two targets' series item by
    item, each pair measured back to back under the same load."""
    ttft, decode = [], []
    for r in records:
        ok = "error" not in r and r.get("ttft_s") is not None
        ttft.append(round((r["ttft_s"] - delay_s) * 1000, 3) if ok else None)
        span = r["e2e_s"] - r["ttft_s"] if ok else 0.0
        decode.append(round((r["completion_tokens"] - 1) / span, 3) if ok and r["completion_tokens"] >= 2
                      and span > 0 else None)
    return {"keys": [f"{r['pass']}:{r['id']}" for r in records], "ttft_compute_ms": ttft,
            "decode_tokens_per_s": decode}


def _measure_all(config: BenchConfig, ctx: StageContext, specs: list[TargetConfig], items: list[Item],
                 baseline: str) -> tuple[list[dict[str, Any]], list[dict]]:
    """Every target loaded at once and asked item by item (see bench_measure); then lm-eval, one at a time."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from slmkit.pipelines.core.progress import LoggedProgress

    task = config.task
    prompts = [(it.id, it.prompt) for it in items]
    per_target = config.warmup + len(prompts) * config.repeats
    rows: dict[str, dict[str, Any]] = {}
    targets: dict[str, tuple[TargetConfig, Target]] = {}
    all_samples: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with contextlib.ExitStack() as stack, LoggedProgress(*columns, console=ctx.console, transient=False) as bar:
        for spec in specs:
            label = spec.default_label()
            rows[label] = {"label": label, "kind": spec.kind, "note": _note(spec),
                           "reference": spec.reference or (None if label == baseline else baseline),
                           # the target's own config, so route can ask the same target again
                           "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
            try:
                target, facts = stack.enter_context(ready(spec, ctx))
            except SlmkitError as exc:
                rows[label].update(status="failed", error=str(exc)[:1000])
                ctx.console.print(f"[red]✗[/] {label}: {exc}")
                continue
            rows[label].update(facts)
            targets[label] = (spec, target)
        bars = {label: bar.add_task(f"bench {label}", total=per_target) for label in targets}
        outcomes = measure([t for _, t in targets.values()], prompts, task.max_tokens, task.stop, config.warmup,
                           config.repeats, progress=lambda label, n: bar.advance(bars[label], n))
        for label, (spec, target) in targets.items():
            row, result = rows[label], outcomes[label]
            row["size_mb"] = size_mb(target)
            stats = speed_stats(result.records)
            if result.failed and not result.records:
                row.update(status="failed", error=result.failed[:1000])
            elif stats["ok"] == 0:  # a target none of whose requests worked has no figures to show
                first = next(r["error"] for r in result.records if "error" in r)
                row.update(status="failed", error=f"all {stats['requests']} requests failed, e.g. {first}"[:1000])
            if row.get("status") == "failed":
                ctx.console.print(f"[red]✗[/] {label}: {row['error']}")
                continue
            quality, samples = score(result.records, items, task.metric)
            delay_s = _injected_delay_s(spec)
            paired = paired_series(result.records, delay_s)
            row.update(status="ok", **stats, peak_rss_mb=result.peak_rss_mb, load_s=result.load_s, **quality,
                       errors=_errors(result), paired=paired)
            if delay_s:  # the figure a ratio between machines can use: the stand-in's own compute
                row["injected_delay_ms"] = spec.delay_ms
                row["ttft_compute_ms_p50"] = round(statistics.median(
                    v for v in paired["ttft_compute_ms"] if v is not None), 2)
            row.update(cost_figures(spec.kind, spec.price_input_per_1m, spec.price_output_per_1m, stats, config.cost))
            if spec.kind == "openai":
                row["prompt_tokens_per_s_note"] = "client-side: includes the network and any server queueing"
            all_samples += [{"target": label, **s} for s in samples]
        # lm-eval after the speed run, one target at a time, in this process: the workers are closed by now.
        for label, (spec, target) in targets.items():
            if rows[label].get("status") == "ok" and wants_lm_eval(config, spec):
                bar.update(bars[label], description=f"bench {label}: lm-eval")
                rows[label].update(lm_eval_scores(config, spec, target.location))
                bar.update(bars[label], description=f"bench {label}")
    return list(rows.values()), all_samples


def run(config: BenchConfig, ctx: StageContext) -> Outcome:
    from slmkit.pipelines.bench import report as bench_report
    from slmkit.pipelines.core.rundir import write_json

    specs = config.targets or default_targets(ctx)
    from slmkit.pipelines.core.secrets import key_for

    for i, spec in enumerate(specs):  # a named key variable that is unset stops the stage before any request
        if spec.kind == "openai":
            urls = spec.base_url if isinstance(spec.base_url, list) else [spec.base_url or "http://127.0.0.1"]
            for url in urls:  # a pool: every endpoint gets the key, so each is checked (and warned for) alike
                key_for(spec.api_key_env, url, f"bench.targets.{i}.api_key_env")
    task = config.task
    data = task.data or ctx.first_input("eval", ["curate"])
    if data is None:
        raise SlmkitError("bench.task.data: no task file given and no curate `eval` output in this run")
    try:
        items = load_items(data, task)
    except SlmkitError as exc:
        if task.data:
            raise
        raise SlmkitError(f"{exc}\n(bench.task.data is unset, so the task is curate's eval split; point "
                          f"bench.task.data at a JSONL with reference answers)") from None
    _check_answers(items, task.metric, str(data))
    baseline = baseline_label(config, specs)
    rows, all_samples = _measure_all(config, ctx, specs, items, baseline)
    if not any(r["status"] == "ok" for r in rows):
        raise StageFailed("bench: every target failed:\n" + "\n".join(f"  {r['label']}: {r['error']}" for r in rows))
    by_label = {r["label"]: r for r in rows}
    for r in rows:
        ref = by_label.get(r["reference"] or r["label"])
        ok = r.get("quality") is not None and ref and ref.get("quality")
        r["quality_retention_pct"] = round(100 * r["quality"] / ref["quality"], 2) if ok else None

    bench = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "task": {"data": str(data), "items": len(items), "metric": task.metric, "max_tokens": task.max_tokens,
                 "stop": task.stop},
        "metric": task.metric,
        "baseline": baseline,
        "warmup": config.warmup,
        "repeats": config.repeats,
        "order": "interleaved: each item to every target in turn, in the order of `targets`",
        "cost": config.cost.model_dump(),
        "targets": rows,
    }
    write_json(ctx.out / "bench.json", bench)
    write_jsonl(ctx.out / "samples.jsonl", all_samples)
    bench_report.write_report(bench, ctx.out)
    bench_report.print_table(bench, ctx.console)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    return Outcome(outputs={"bench": "bench.json", "report": "report.md", "samples": "samples.jsonl"},
                   metrics={"baseline": baseline, "failed": [r["label"] for r in rows if r["status"] != "ok"],
                            "quality": {r["label"]: r["quality"] for r in ok_rows},
                            "ttft_ms_p50": {r["label"]: r["ttft_ms_p50"] for r in ok_rows}})
