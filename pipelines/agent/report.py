"""agent's human-facing output: a Rich table, agent.md and agent.png, all from agent.json's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.pipelines.core.rundir import write_text


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _num(fmt: str):
    return lambda v: "–" if v is None else fmt.format(v)


def _usd(v: Any) -> str:
    return "–" if v is None else f"{v:.2e}" if 0 < v < 0.001 else f"{v:.4f}"


def _pass_k(row: dict) -> str:
    return " / ".join(f"{100 * v:.0f}" for v in row["pass_hat_k"].values()) or "–"


def _errors(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in row["call_errors"].items()) or "–"


# (header, how the cell is made from a row): one table drives the console and the markdown alike.
COLUMNS: list[tuple[str, Any]] = [
    ("suite", lambda r: r["suite"]),
    ("target", lambda r: r["target"]),
    ("mode", lambda r: r["mode"]),
    ("tasks×k", lambda r: f"{r['tasks']}×{r['runs'] // max(r['tasks'], 1)}"),
    ("success", lambda r: _pct(r["success"])),
    ("pass^1..k %", _pass_k),
    ("valid calls", lambda r: _pct(r["valid_calls"])),
    ("call acc.", lambda r: _pct(r["call_accuracy"])),
    ("call errors", _errors),
    ("abstain", lambda r: _pct(r["abstention"])),
    ("model calls", lambda r: _num("{:.1f}")(r["model_calls_per_task"])),
    ("tokens", lambda r: _num("{:.0f}")(r["tokens_per_task"])),
    ("p50 s", lambda r: _num("{:.2f}")(r["latency_s_p50"])),
    ("p95 s", lambda r: _num("{:.2f}")(r["latency_s_p95"])),
    ("$/task", lambda r: _usd(r["usd_per_task"])),
    ("$/success", lambda r: _usd(r["usd_per_success"])),
]


def _title(result: dict) -> str:
    suites = ", ".join(f"{s['name']} ({s['items']})" for s in result["suites"])
    penalty = result.get("frequency_penalty")
    return f"agent · {suites} · k={result['k']}" + (f" · frequency penalty {penalty}" if penalty else "")


def print_table(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=_title(result))
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name in ("suite", "target", "mode", "call errors") else "right",
                         overflow="fold")
    for row in result["rows"]:
        table.add_row(*(make(row) for _, make in COLUMNS))
    console.print(table)
    for label, error in result.get("failed_targets", {}).items():
        console.print(f"  [red]{label}: failed: {error}[/]")


def markdown(result: dict) -> str:
    head = [name for name, _ in COLUMNS]
    lines = [f"# {_title(result)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(make(r) for _, make in COLUMNS) + " |" for r in result["rows"]]
    lines += ["", "Suites: " + "; ".join(f"{s['name']}: {s['items']} items from {s['source']}"
                                         for s in result["suites"]),
              "", "success: the task's expected final state reached (BFCL: the call BFCL's rules accept, or no "
                  "call where none fits). pass^1..k: the chance k runs of a task all succeed. valid calls: "
                  "parsed and fit the tool's schema. call errors: BFCL's categories against the expected calls. "
                  "Latency: wall time per task. $: endpoints at their token prices, local targets at the "
                  "machine's hourly price.", ""]
    notes = {r["target"]: r["note"] for r in result["rows"] if r.get("note")}
    lines += [f"- {t}: {n}" for t, n in notes.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['suite']}\n{r['target']} · {r['mode']}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2), sharey=True)
    ys = range(len(rows))
    a.barh(ys, [100 * r["success"] for r in rows], color=["#4c72b0" if r["mode"] == "lm" else "#dd8452"
                                                          for r in rows])
    a.set_yticks(list(ys), labels, fontsize=8)
    a.invert_yaxis()
    a.set_xlim(0, 100)
    a.set_xlabel("task success % (blue: lm agency, orange: code agency)")
    b.barh(ys, [r["latency_s_p50"] or 0 for r in rows], color="#55a868")
    b.set_xlabel("latency per task, p50 (s)")
    fig.suptitle(_title(result))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out: Path) -> None:
    write_text(out / "agent.md", markdown(result))
    plot(result, out / "agent.png")
