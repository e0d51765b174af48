"""Route's training data: every traffic item asked of the local and the remote target, as bench asks them.

The two targets are bench's own (their configs are in bench.json), run by bench's interleaved measurement:
both loaded at once, each item to one then the other, greedy and streamed, so the answers are the ones bench
would get and the latencies are measured under the same load. Per item and path: the answer, its quality
(the task's metric), tokens, time to first token, end-to-end time and cost; for the local answer also its
per-token log-probabilities and whether it passes the task's validation.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from slmkit.evals.metrics import METRICS
from slmkit.evals.tasks import Item
from slmkit.pipelines.bench.cost import CostConfig
from slmkit.pipelines.bench.targets import TargetConfig
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.distill.validators import ValidateConfig, check
from slmkit.pipelines.route import signals


def bench_rows(ctx: StageContext, given: Path | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """bench.json's target rows by label, and the bench as a whole."""
    if given is None and "bench" not in ctx.upstream:
        raise SlmkitError("route: no bench results: run it in a recipe after bench, or give route.bench "
                          "(--bench BENCH_JSON)")
    path = given or ctx.input("bench", "bench")
    try:
        bench = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlmkitError(f"route.bench: {path} is not a readable bench.json: {exc}") from None
    rows = {r["label"]: r for r in bench["targets"]}
    return rows, bench


def target_config(row: dict[str, Any], where: str) -> TargetConfig:
    """The target bench ran, asked again: its config, with an upstream `from` replaced by the file it named."""
    if "spec" not in row:
        raise SlmkitError(f"{where}: bench.json has no config for '{row['label']}' (written by an older slmkit); "
                          "rerun bench (slmkit run RECIPE --force bench)")
    spec = dict(row["spec"])
    if spec.pop("from", None) is not None:
        spec["path"] = row["model"]
    return TargetConfig(**spec)


def _cache_key(local: TargetConfig, remote: TargetConfig, items: list[Item], max_tokens: int, stop: list[str]) -> str:
    """What the answers depend on: both targets' configs (the local model's bytes, not its path), the requests
    and how they are asked. Timings come along with the answers: a cached rerun reports the first run's."""
    from slmkit.pipelines.core import fingerprint as fp

    def ident(t: TargetConfig) -> dict:
        d = t.model_dump(mode="json", exclude={"label", "note", "reference"})
        if t.path is not None:
            d["path"] = fp.digest_path(Path(t.path))
        if t.few_shot is not None:
            d["few_shot"] = fp.digest_path(Path(t.few_shot))
        return d

    return fp.sha256_text(fp.canonical({"local": ident(local), "remote": ident(remote), "max_tokens": max_tokens,
                                        "stop": stop, "items": [(it.id, it.prompt) for it in items]}))[:24]


def cost_usd(row: dict, path_kind: str, spec: TargetConfig, cost: CostConfig) -> float | None:
    """One answer's cost: an endpoint's tokens at its prices; a local model's machine time at the hour's price."""
    if "error" in row:
        return None
    if path_kind == "openai":
        if spec.price_input_per_1m is None or spec.price_output_per_1m is None:
            return None
        return (row["prompt_tokens"] * spec.price_input_per_1m + row["completion_tokens"] * spec.price_output_per_1m) / 1e6
    if cost.hardware_usd_per_hour is None:
        return None
    return cost.hardware_usd_per_hour * row["e2e_s"] / 3600


def _answer(rec: dict, item: Item, metric: str, spec: TargetConfig, cost: CostConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"error": rec["error"]} if "error" in rec else {
        "text": rec["text"], "prompt_tokens": rec["prompt_tokens"], "completion_tokens": rec["completion_tokens"],
        "ttft_s": rec["ttft_s"], "e2e_s": rec["e2e_s"]}
    out["score"] = 0.0 if "error" in rec else round(METRICS[metric](rec["text"], item.answer).value, 4)
    out["cost_usd"] = cost_usd(rec, spec.kind, spec, cost)
    return out


def gather(ctx: StageContext, local: TargetConfig, remote: TargetConfig, items: list[Item],
           extra: dict[str, dict], metric: str, max_tokens: int, stop: list[str], validate: ValidateConfig,
           cost: CostConfig) -> list[dict[str, Any]]:
    """One row per item: the request, both answers, the local answer's signals."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from slmkit.pipelines.bench import ready
    from slmkit.pipelines.bench.interleaved import measure
    from slmkit.pipelines.core.progress import LoggedProgress

    key = _cache_key(local, remote, items, max_tokens, stop)
    cached = ctx.cache / "route" / f"{key}.json"
    if cached.is_file():  # the same targets asked the same requests before: no remote call is paid for twice
        by_id = json.loads(cached.read_text())
        ctx.console.print(f"route: answers of both targets from the cache ({cached.name}); no request sent")
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with contextlib.ExitStack() as stack, LoggedProgress(*columns, console=ctx.console, transient=False) as bar:
            local_t, _ = stack.enter_context(ready(local, ctx))
            remote_t, _ = stack.enter_context(ready(remote, ctx))
            local_t.logprobs = True
            task = bar.add_task("route: asking both targets", total=2 * (len(items) + 1))
            out = measure([local_t, remote_t], [(it.id, it.prompt) for it in items], max_tokens, stop, warmup=1,
                          repeats=1, progress=lambda label, n: bar.advance(task, n))
        for label, res in out.items():
            if res.failed:
                raise SlmkitError(f"route: target '{label}' failed: {res.failed}")
        by_id = {"local": {r["id"]: r for r in out[local_t.label].records},
                 "remote": {r["id"]: r for r in out[remote_t.label].records}}
        errors = [r for side in by_id.values() for r in side.values() if "error" in r]
        if not errors:  # only a complete set of answers is kept: a failed request is asked again next time
            from slmkit.pipelines.core.rundir import write_json

            cached.parent.mkdir(parents=True, exist_ok=True)
            write_json(cached, by_id)
    rows = []
    for it in items:
        lrec, rrec = by_id["local"][it.id], by_id["remote"][it.id]
        valid = "error" not in lrec and check(lrec["text"], validate) is None
        lps = lrec.get("token_logprobs") or []
        rows.append({"id": it.id, "text": it.prompt, "metadata": extra.get(it.id, {}).get("metadata") or {},
                     "group": extra.get(it.id, {}).get("group"),
                     "local": _answer(lrec, it, metric, local, cost), "remote": _answer(rrec, it, metric, remote, cost),
                     "signals": signals.features(valid, [max(signals.FLOOR, v) for v in lps]),
                     "token_logprobs": [round(v, 4) for v in lps]})
    return rows
