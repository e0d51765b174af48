"""route.md, route.png and the terminal table: quality against the share of remote calls, per router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci(v: list | None, fmt: str = "{:.3f}") -> str:
    return "" if not v else f" [{fmt.format(v[0])}, {fmt.format(v[1])}]"


def _usd(v: float | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


def rows(summary: dict) -> list[list[str]]:
    out = []
    refs = summary["references"]
    for name, r in [("local only", refs["local only"]), ("remote only", refs["remote only"]),
                    *summary["routers"].items(), ("oracle", refs["oracle"])]:
        chosen = "  ◀ chosen" if name == summary.get("chosen") else ""
        out.append([name + chosen, _f(r.get("quality")) + _ci(r.get("quality_ci")),
                    _f(r.get("remote_share"), "{:.0%}"), _f(r.get("apgr")) + _ci(r.get("apgr_ci")),
                    _f(r.get("aiq_over_random"), "{:+.3f}") + _ci(r.get("aiq_over_random_ci"), "{:+.3f}"),
                    _f(r.get("cpt50"), "{:.0%}"), _f(r.get("cpt80"), "{:.0%}"),
                    _f(r.get("cost_cut"), "{:.0%}") + _ci(r.get("cost_cut_ci"), "{:.0%}"),
                    _usd(r.get("monthly_cost_usd")),
                    f"{_f(r['ttft_ms']['overall']['p50'], '{:.0f}')} / {_f(r['ttft_ms']['overall']['p95'], '{:.0f}')}"
                    if "ttft_ms" in r else "—"])
    return out


HEADERS = ["router", "quality (held-out) [95% CI]", "remote", "APGR [95% CI]", "AIQ − random [95% CI]",
           "CPT(50%)", "CPT(80%)",
           "cost cut vs all-remote", "monthly", "TTFT p50 / p95 ms"]


def print_table(summary: dict, console: Console) -> None:
    t = Table(title=f"route: {summary['local']['label']} ⇄ {summary['remote']['label']} — goal: "
                    f"{summary['goal']['in_words']}")
    for h in HEADERS:
        t.add_column(h, overflow="fold")
    for r in rows(summary):
        t.add_row(*r)
    console.print(t)
    if summary.get("message"):
        console.print(f"[yellow]{summary['message']}[/]")


def _paths_table(summary: dict) -> list[str]:
    lines = ["| router | path | requests | TTFT p50 ms | TTFT p95 ms |", "|---|---|---|---|---|"]
    for name, r in summary["routers"].items():
        for path in ("local", "remote"):
            t = r["ttft_ms"][path]
            lines.append(f"| {name} | {path} | {t['requests']} | {_f(t['p50'], '{:.0f}')} | {_f(t['p95'], '{:.0f}')} |")
    return lines


def _groups_table(summary: dict) -> list[str]:
    groups = sorted({g for r in summary["routers"].values() for g in r.get("by_group") or {}})
    if not groups:
        return []
    lines = ["| router | " + " | ".join(f"{g}: remote / quality (local-only, remote-only)" for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for name, r in summary["routers"].items():
        cells = [f"{r['by_group'][g]['remote_share']:.0%} / {r['by_group'][g]['quality']:.3f} "
                 f"({r['by_group'][g]['local_only']:.3f}, {r['by_group'][g]['remote_only']:.3f})"
                 for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict) -> str:
    s, t = summary["split"], summary["traffic"]
    chosen = summary.get("chosen")
    lines = [
        f"# route: {summary['local']['label']} (local) ⇄ {summary['remote']['label']} (remote)", "",
        f"Traffic: {t['items']} requests from `{t['data']}`, scored by `{t['metric']}`; the remote answer is "
        f"better on {t['remote_better_items']}, the local one on {t['local_better_items']}.",
        f"Remote: {summary['remote'].get('note') or summary['remote']['label']}.", "",
        f"Held-out figures: {s['method']} (seed {s['seed']}); every request is routed once by a router that never "
        f"saw it. Intervals: 95% bootstrap over requests ({s['bootstrap']} resamples).",
        f"Goal: {summary['goal']['in_words']} (held when the held-out figure is within {summary['goal']['slack']:.0%}).",
        "",
        "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(r) + " |" for r in rows(summary)), "",
        "APGR: the mean over remote shares of the part of the local-only → remote-only quality gap recovered "
        "(random routing: 0.5). AIQ − random: the mean quality over remote shares minus the random line's (needs no "
        "gap). CPT(x): the share of remote calls needed to recover x of that gap. Cost: the "
        "remote's tokens at its prices plus the local machine's time at its hourly price; a cascade pays the "
        "local attempt on every request.", "",
    ]
    if summary.get("message"):
        lines += [f"**{summary['message']}**", ""]
    if chosen:
        r = summary["routers"][chosen]
        lines += [f"Operating point ({chosen}): quality {r['quality']:.3f}, {r['remote_share']:.0%} remote "
                  f"(goal held: {'yes' if r['goal_held'] else 'no'}); APGR {_f(r['apgr'])}, over random by "
                  f"{_f(r['apgr_over_random'])}{_ci(r['apgr_over_random_ci'])}; AIQ over random "
                  f"{_f(r['aiq_over_random'], '{:+.4f}')}{_ci(r['aiq_over_random_ci'], '{:+.4f}')}.", ""]
    else:
        lines += ["**No router holds the goal on held-out requests.**", ""]
    for name, r in summary["routers"].items():
        if r["fit"]["best"]:
            lines.append(f"- {name}: goal not met when fitted on every request — {r['fit']['best']}")
    lines += ["", "## Time to first token per path", "",
              "A cascade holds the local answer until it is checked, and an escalated request waits for the "
              "whole local attempt first.", "", *_paths_table(summary), ""]
    groups = _groups_table(summary)
    if groups:
        lines += ["## By traffic group (reports only; no router sees the group)", "", *groups, ""]
    lines += ["![quality against share of remote calls](route.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = summary["references"]
    ql, qr = refs["local only"]["quality"], refs["remote only"]["quality"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([0, 1], [ql, qr], "--", color="grey", label="random")
    oc = summary["curves"]["oracle"]
    ax.plot(oc["share"], oc["quality"], ":", color="black", label="oracle")
    for name, c in summary["curves"].items():
        if name == "oracle":
            continue
        line, = ax.plot(c["share"], c["quality"], label=name)
        r = summary["routers"][name]
        ax.plot([r["remote_share"]], [r["quality"]], "o", color=line.get_color())
    ax.set_xlabel("share of requests sent remote (held-out)")
    ax.set_ylabel(f"quality ({summary['traffic']['metric']})")
    ax.set_title(f"{summary['local']['label']} ⇄ {summary['remote']['label']}: dots = calibrated operating points")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary: dict, out: Path) -> None:
    (out / "route.md").write_text(markdown(summary))
    plot(summary, out / "route.png")
