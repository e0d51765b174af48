"""bench's human-facing output: a Rich table, report.md, and two PNG plots (latency per target, quality vs cost).

Every figure comes from bench.json; nothing here measures or computes a number that is not already there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slmkit.pipelines.core.rundir import write_text

# (column, bench.json key, format): one table drives the console table and the markdown table alike.
COLUMNS: list[tuple[str, str, str]] = [
    ("target", "label", "{}"),
    ("kind", "kind", "{}"),
    ("quality", "quality", "{:.3f}"),
    ("retention %", "quality_retention_pct", "{:.1f}"),
    ("TTFT p50 ms", "ttft_ms_p50", "{:.1f}"),
    ("TTFT p95 ms", "ttft_ms_p95", "{:.1f}"),
    ("decode tok/s", "decode_tokens_per_s", "{:.1f}"),
    ("prompt tok/s", "prompt_tokens_per_s", "{:.1f}"),
    ("e2e p50 ms", "e2e_ms_p50", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("size MB", "size_mb", "{:.1f}"),
    ("$/1M tok", "cost_per_1m_tokens_usd", "{:.4f}"),
    ("$/month", "monthly_cost_usd", "{:.2f}"),
    ("errors", "errors", "{}"),
]
# The console gets the figures people compare first; report.md and bench.json carry the rest.
CONSOLE = ("target", "kind", "quality", "retention %", "TTFT p50 ms", "TTFT p95 ms", "decode tok/s", "peak RSS MB",
           "$/1M tok", "errors")


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    if row.get("status") == "failed" and key not in ("label", "kind"):
        return "FAILED" if key == "quality" else "–"
    value = row.get(key)
    if key == "errors":
        return str((value or {}).get("count", 0))
    if value is None:
        return "–"
    return fmt.format(value)


def lm_eval_columns(bench: dict) -> list[tuple[str, str, str]]:
    """One column per lm-eval (task, metric) any target has: (header, task, metric); stderrs stay in the JSON."""
    seen: dict[tuple[str, str], None] = {}
    for row in bench["targets"]:
        for task, figs in (row.get("lm_eval") or {}).items():
            for metric, value in figs.items():
                if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                    seen[(task, metric)] = None
    prefix = _shared_prefix([task for task, _ in seen])
    return [(f"{task.removeprefix(prefix)} {metric}", task, metric) for task, metric in seen]


def _shared_prefix(tasks: list[str]) -> str:
    """The word prefix every task name shares (`suite_a`, `suite_b` -> `suite_`), kept out of the column headers
    so that they show what differs; none for a single task, or when it would leave a name empty."""
    names = sorted(set(tasks))
    if len(names) < 2:
        return ""
    common = os.path.commonprefix(names)
    prefix = common[: common.rfind("_") + 1]
    return prefix if all(len(n) > len(prefix) for n in names) else ""


def lm_eval_cell(row: dict, task: str, metric: str) -> str:
    value = (row.get("lm_eval") or {}).get(task, {}).get(metric)
    return "–" if not isinstance(value, (int, float)) else f"{value:.3f}"


def print_table(bench: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"bench · {bench['task']['items']} items · metric {bench['metric']} · "
                        f"baseline {bench['baseline']}")
    columns = [c for c in COLUMNS if c[0] in CONSOLE]
    extra = lm_eval_columns(bench)
    for name in [c[0] for c in columns] + [c[0] for c in extra]:
        table.add_column(name, justify="left" if name in ("target", "kind") else "right", overflow="fold")
    for row in bench["targets"]:
        table.add_row(*(cell(row, key, fmt) for _, key, fmt in columns),
                      *(lm_eval_cell(row, task, metric) for _, task, metric in extra))
    console.print(table)
    for row in bench["targets"]:
        if row.get("note"):
            console.print(f"  [dim]{row['label']}: {row['note']}[/]")


def _plots(bench: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    ok = [r for r in bench["targets"] if r.get("status") == "ok"]
    written = []
    dists = [(r["label"], r["ttft_ms"]) for r in ok if r.get("ttft_ms")]
    if dists:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(dists) + 2))
        ax.boxplot([d for _, d in dists], vert=False, tick_labels=[lbl for lbl, _ in dists], showfliers=True)
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (ms, log scale)")
        ax.set_title("Time to first token per target")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    points = [r for r in ok if r.get("quality") is not None and r.get("cost_per_1m_tokens_usd") is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in points:
        ax.scatter(r["cost_per_1m_tokens_usd"], r["quality"], s=50)
        ax.annotate(r["label"], (r["cost_per_1m_tokens_usd"], r["quality"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xlabel("cost per 1M tokens (USD)")
    ax.set_ylabel(f"quality ({bench['metric']})")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Quality against cost" + ("" if points else " (no target has both figures)"))
    fig.tight_layout()
    fig.savefig(out / "quality_cost.png", dpi=110)
    plt.close(fig)
    written.append("quality_cost.png")
    return written


def markdown(bench: dict, plots: list[str]) -> str:
    task = bench["task"]
    extra = lm_eval_columns(bench)
    lines = [
        "# slmkit bench",
        "",
        f"{bench['date']} · {bench['machine']['cpus']} CPUs · {bench['machine']['platform']}",
        "",
        f"Task: `{task['data']}` ({task['items']} items), metric **{bench['metric']}**, max_tokens "
        f"{task['max_tokens']}; {bench['warmup']} warm-up request(s), {bench['repeats']} timed pass(es); "
        f"quality retention against **{bench['baseline']}** unless a target names another reference.",
        "",
        "| " + " | ".join([name for name, _, _ in COLUMNS] + [h for h, _, _ in extra]) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS) + len(extra))) + "|",
    ]
    for row in bench["targets"]:
        cells = [cell(row, key, fmt) for _, key, fmt in COLUMNS] + [lm_eval_cell(row, t, m) for _, t, m in extra]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Notes", ""]
    for row in bench["targets"]:
        facts = []
        if row.get("note"):
            facts.append(row["note"])
        if row.get("status") == "failed":
            facts.append(f"failed: {row.get('error')}")
        else:
            if row.get("cost_basis"):
                facts.append(f"cost: {row['cost_basis']}")
            if row.get("prompt_tokens_per_s_note"):
                facts.append(f"prompt tok/s is {row['prompt_tokens_per_s_note']}")
            if "estimate" in (row.get("token_source") or []):
                facts.append("token counts are estimates (characters / 4): the endpoint reported no usage and "
                             "no tokenizer was named")
            if row.get("field_accuracy"):
                acc = ", ".join(f"{k} {v:.2f}" for k, v in row["field_accuracy"].items())
                facts.append(f"per-field accuracy: {acc}; invalid JSON: {row.get('invalid_json', 0)}")
            scores = [f"{task} {m} {v:.3f}" for task, figs in (row.get("lm_eval") or {}).items()
                      for m, v in figs.items() if isinstance(v, (int, float)) and not m.endswith("_stderr")]
            if scores:
                facts.append("lm-eval: " + ", ".join(scores))
            if row.get("lm_eval_error"):
                facts.append(f"lm-eval failed: {row['lm_eval_error']}")
            errs = row.get("errors") or {}
            if errs.get("count"):
                facts.append(f"{errs['count']} failed request(s), e.g. {errs['first'][0]}")
        lines.append(f"- **{row['label']}** ({row['kind']}): " + ("; ".join(facts) or "–"))
    lines += ["", "Speed: TTFT is the time to the first chunk carrying text (for an endpoint, on the client, network "
              "included); decode tok/s counts the tokens after the first over the time after the first token; "
              "tokens are counted with a tokenizer, not from stream chunks. Peak RSS is each local target's own "
              "process.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(bench: dict, out: Path) -> None:
    plots = _plots(bench, out)
    write_text(out / "report.md", markdown(bench, plots))
