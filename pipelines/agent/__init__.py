"""agent: one tool workflow run with language-model agency and with code agency, on every target, side by side.

    workflow YAML (tools, tasks, controller) ─┐                   ┌─ lm    the model plans every call
    BFCL items (bfcl-eval's data files)  ─────┼─ × targets × modes ┤
                                              │     × k runs       └─ code  the controller does; the model fills
    ──▶ per-run records (runs.jsonl) ──▶ a row per suite × target × mode (scoring.summarize)
    ──▶ agent.json, agent.md, agent.png, the table on the console (report)

Targets are bench's (pipelines/bench/targets.py): gguf files, hf folders, endpoints, and `serve` for a loopback
stand-in of a cloud model. Every model call goes through the model-client layer with Request.json_schema. With
k > 1 runs sample (temperature, a seed per run) so that pass^k measures how often a target agrees with itself;
k = 1 is greedy. A target that cannot start is reported and the others still run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from slmkit.pipelines.agent.trace import RunOptions
from slmkit.pipelines.bench.targets import TargetConfig
from slmkit.pipelines.core import machine
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.stage import Outcome, StageContext
from slmkit.pipelines.core.types import InputPath, StrictModel

Mode = Literal["lm", "code"]


class BfclConfig(StrictModel):
    subsets: list[Literal["simple", "multiple", "irrelevance", "multi_turn"]] = Field(
        default_factory=lambda: ["simple", "multiple", "irrelevance"], min_length=1,
        description="BFCL subsets read from the bfcl-eval package's data files; multi_turn is BFCL's "
                    "multi-turn base set, scored by state (lm mode only)")
    limit: int | None = Field(20, gt=0, description="the first N items of each subset (null: all)")


class AgentConfig(StrictModel):
    workflow: InputPath | None = Field(None, description="workflow YAML: tools, tasks, controller")
    bfcl: BfclConfig | None = Field(None, description="also run BFCL's function-calling subsets")
    targets: list[TargetConfig] = Field(default_factory=list, description="gguf:PATH, hf:PATH, "
                                        "openai:MODEL@BASE_URL or mappings, as bench's; empty: the upstream "
                                        "quantize GGUFs")
    modes: list[Mode] = Field(default_factory=lambda: ["lm", "code"], min_length=1,
                              description="lm: the model holds the control flow; code: the controller does")
    k: int = Field(1, ge=1, le=16, description="runs per task; pass^1..pass^k are reported (k > 1 samples)")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature when k > 1 (k = 1: greedy)")
    max_steps: int = Field(8, gt=0, description="lm mode: model turns per task before the run is stopped")
    max_tokens: int = Field(192, gt=0, description="answer length limit per model turn")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI's frequency_penalty on every model "
                                     "call (llama.cpp: over the last 64 tokens); against text that repeats "
                                     "itself until max_tokens cuts its JSON open")
    limit: int | None = Field(None, gt=0, description="the workflow's first N tasks (null: all)")
    hardware_usd_per_hour: float = Field(0.09, ge=0, description="a local target's cost: its model seconds at "
                                                                 "this price (endpoints: their token prices)")

    def extra_inputs(self) -> list[Path]:
        """The workflow's tasks file and its tools' source files, for the stage's fingerprint."""
        from slmkit.pipelines.agent.workflow import workflow_dependencies

        return workflow_dependencies(self.workflow) if self.workflow else []

    @model_validator(mode="after")
    def _something_to_run(self):
        if self.workflow is None and self.bfcl is None:
            raise ValueError("give a `workflow` file, a `bfcl` section, or both")
        labels = [t.default_label() for t in self.targets]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"two targets share the label {', '.join(dupes)}; give each a `label`")
        return self


@dataclass
class Suite:
    """Tasks of one kind: the workflow's, or one BFCL subset's; `run(task, mode, client, opts) -> record`."""

    name: str
    source: str
    tasks: list[Any]
    modes: list[str]
    run: Any


def _workflow_suite(config: AgentConfig) -> Suite:
    from slmkit.pipelines.agent import scoring
    from slmkit.pipelines.agent.code_runner import run_code
    from slmkit.pipelines.agent.lm_runner import run_lm
    from slmkit.pipelines.agent.workflow import load_workflow

    wf = load_workflow(config.workflow)
    if "code" in config.modes and wf.controller is None:
        raise SlmkitError(f"agent.modes: code mode needs a `controller` section in {config.workflow}")
    runners = {"lm": run_lm, "code": run_code}

    def run(task, mode, client, opts) -> dict:
        trace = runners[mode](wf, task, client, opts)
        diff = scoring.state_diff(task.expected_state, trace.final_state)
        valid = [c for c in trace.calls if c.valid]
        should_abstain = task.expected_calls == []
        return {"task": task.id, "kind": task.kind, "success": not diff,  # the state decides, as in tau-bench
                "state_diff": diff, "should_abstain": should_abstain, "abstained": not trace.calls,
                "call_errors": scoring.call_errors(task.expected_calls, valid, wf.tools)
                if task.expected_calls else [], **_trace_fields(trace)}

    return Suite(f"workflow:{wf.name}", str(config.workflow), wf.tasks[:config.limit], list(config.modes), run)


def _bfcl_suites(config: AgentConfig) -> list[Suite]:
    from slmkit.pipelines.agent import bfcl

    def run(item, mode, client, opts) -> dict:
        trace = bfcl.run_item(item, mode, client, opts)
        return {"task": item.id, "kind": item.subset, **bfcl.score(item, trace), "state_diff": {},
                **_trace_fields(trace)}

    root = bfcl.data_dir()
    suites = [Suite(f"bfcl:{s}", f"bfcl-eval {root}/BFCL_v4_{bfcl.SUBSETS[s][0]}.json",
                    bfcl.load_items(s, config.bfcl.limit), list(config.modes), run)
              for s in config.bfcl.subsets if s != "multi_turn"]
    if "multi_turn" in config.bfcl.subsets and "lm" in config.modes:  # no controller owns these: lm mode only
        suites.append(_multi_turn_suite(config, root))
    return suites


def _multi_turn_suite(config: AgentConfig, root: Path) -> Suite:
    from slmkit.pipelines.agent import bfcl_multi

    def run(item, mode, client, opts) -> dict:
        trace, turns = bfcl_multi.run_item(item, mode, client, opts)
        return {"task": item.id, "kind": item.subset, **bfcl_multi.score(item, trace, turns), "state_diff": {},
                **_trace_fields(trace)}

    return Suite("bfcl:multi_turn", f"bfcl-eval {root}/BFCL_v4_{bfcl_multi.STEM}.json (state and response "
                 "checks)", bfcl_multi.load_items(config.bfcl.limit), ["lm"], run)


def _trace_fields(trace) -> dict:
    rec = trace.record()
    rec.pop("final_state")
    return rec


def _targets(config: AgentConfig, ctx: StageContext) -> list[TargetConfig]:
    if config.targets:
        return config.targets
    from slmkit.pipelines.bench import default_targets

    try:
        return default_targets(ctx)
    except SlmkitError:
        raise SlmkitError("agent.targets: no targets given and no upstream quantize or merge output") from None


def _client(target, label: str):
    from slmkit.pipelines.backends import NO_RETRY, ClientSpec, make_client

    return make_client(ClientSpec(kind=target.kind, location=target.location, model=target.model, api=target.api,
                                  where=f"agent target '{label}'", n_ctx=target.n_ctx, n_threads=target.n_threads,
                                  prompt_cache=target.prompt_cache, from_scratch=target.from_scratch,
                                  timeout=target.timeout,
                                  api_key_env=target.api_key_env,
                                  tokenizer=target.tokenizer), NO_RETRY)


def _price(spec: TargetConfig, config: AgentConfig) -> dict:
    if spec.price_input_per_1m is not None or spec.price_output_per_1m is not None:
        return {"input_per_1m": spec.price_input_per_1m, "output_per_1m": spec.price_output_per_1m}
    return {"hardware_usd_per_hour": config.hardware_usd_per_hour}


def _run_target(spec: TargetConfig, suites: list[Suite], config: AgentConfig, ctx: StageContext) -> list[dict]:
    from slmkit.pipelines.bench import ready

    label = spec.default_label()
    records: list[dict] = []
    with ready(spec, ctx) as (target, _facts):
        client = _client(target, label)
        try:
            for suite in suites:
                for mode in suite.modes:
                    started = time.perf_counter()
                    for task in suite.tasks:
                        for r in range(config.k):
                            sampled = config.k > 1
                            opts = RunOptions(config.max_steps, config.max_tokens,
                                              config.temperature if sampled else 0.0,
                                              ctx.seed + r if sampled else None, config.frequency_penalty)
                            rec = suite.run(task, mode, client, opts)
                            records.append({"suite": suite.name, "target": label, "mode": mode, "run": r, **rec})
                    done = [x for x in records if x["suite"] == suite.name and x["mode"] == mode]
                    calls = [c for x in done for c in x["calls"]]
                    ctx.console.print(f"  {label} · {suite.name} · {mode}: {sum(x['success'] for x in done)}/"
                                      f"{len(done)} succeeded, {sum(c['valid'] for c in calls)}/{len(calls)} "
                                      f"calls valid, {sum(x['model_calls'] for x in done) / len(done):.1f} "
                                      f"model calls per task ({time.perf_counter() - started:.0f} s)")
        finally:
            client.close()
    return records


def run(config: AgentConfig, ctx: StageContext) -> Outcome:
    from slmkit.pipelines.agent import report, scoring
    from slmkit.pipelines.core.jsonl import write_jsonl
    from slmkit.pipelines.core.rundir import write_json

    suites = ([_workflow_suite(config)] if config.workflow else []) + (_bfcl_suites(config) if config.bfcl else [])
    specs = _targets(config, ctx)
    rows, records, failed = [], [], {}
    for spec in specs:
        label = spec.default_label()
        try:
            got = _run_target(spec, suites, config, ctx)
        except SlmkitError as exc:  # this target could not start: the others still run
            failed[label] = str(exc)
            ctx.console.print(f"[red]  {label}: {exc}[/]")
            continue
        records += got
        for suite in suites:
            for mode in suite.modes:
                mine = [r for r in got if r["suite"] == suite.name and r["mode"] == mode]
                rows.append({"suite": suite.name, "target": label, "mode": mode, "kind": spec.kind,
                             "note": spec.note, **scoring.summarize(mine, config.k, _price(spec, config))})
    if not rows:
        raise StageFailed("agent: every target failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "suites": [{"name": s.name, "source": s.source, "items": len(s.tasks), "modes": s.modes} for s in suites],
        "k": config.k, "temperature": config.temperature if config.k > 1 else 0.0,
        "max_steps": config.max_steps, "frequency_penalty": config.frequency_penalty, "failed_targets": failed,
        "rows": rows,
    }
    write_json(ctx.out / "agent.json", result)
    write_jsonl(ctx.out / "runs.jsonl", records)
    report.write_report(result, ctx.out)
    report.print_table(result, ctx.console)
    return Outcome(outputs={"agent": "agent.json", "report": "agent.md", "plot": "agent.png", "runs": "runs.jsonl"},
                   metrics={"success": {f"{r['suite']}|{r['target']}|{r['mode']}": r["success"] for r in rows},
                            "failed": sorted(failed)})
