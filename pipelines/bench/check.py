"""`slmkit bench --check REPORTED.json`: do a bench's results back up figures someone reported?

Quality is compared in absolute terms (within `quality_abs`); an lm-eval accuracy within `lm_eval_stderr` of its
measured standard errors when that is wider (a figure over 40 items is known to a few items, no better). Speed is compared as ratios between targets of
the same run, relative to one reference target, within a factor (`speed_factor`): absolute times move with the
machine, ratios between targets measured side by side much less. bench asks every target item by item, so a
ratio is taken pair by pair — this target's figure on an item over the reference's on the same item, asked
back to back under the same load — and the median of those is the figure (see PAIRED). An endpoint's injected
delay (`delay_ms`, a stand-in for the network) is subtracted first: a fixed wait does not scale with the
machine, so a ratio that mixed it with compute would move from one machine to the next. The reported file
(written by `--write-reported`) looks like:

    {"reference": "fine-tuned F16",
     "tolerances": {"quality_abs": 0.05, "speed_factor": 1.5, "lm_eval_stderr": 2.0},
     "meaning": {"ttft_ratio": "...", "decode_ratio": "..."},
     "targets": {"Q4_K_M": {"quality": 0.91, "decode_ratio": 1.3, "ttft_ratio": 1.1,
                            "tolerances": {...optional, per target...}}}}

with `targets` under `machines.KIND` instead, one set per kind of machine (core/reported.py): a fine-tuned
student's near-tie items fall differently with AVX-512 than with AVX2, and a figure over 40 items moves with them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.reported import check_by_kind, result_kind, write_set

# lm_eval_stderr: an lm-eval accuracy over n items is known only to about its standard error (0.07 at p=0.75
# over the demo's 40 items, three items), and a reproduction on another CPU fine-tunes into weights that differ
# in their last bits, which moves the items nearest a decision; so an lm-eval figure holds within this many of
# its measured standard errors, or quality_abs, whichever is wider.
DEFAULT_TOLERANCES = {"quality_abs": 0.05, "speed_factor": 1.5, "lm_eval_stderr": 2.0}
# Speed figures: name -> the per-request series in bench.json's `paired` that two targets divide item by item.
PAIRED = {"ttft_ratio": "ttft_compute_ms", "decode_ratio": "decode_tokens_per_s"}
MEANING = {
    "ttft_ratio": "median over items of this target's time to first token / the reference's on the same item, "
                  "the two asked back to back; an endpoint's injected delay_ms is subtracted first (its compute "
                  "and transport only)",
    "decode_ratio": "median over items of this target's decode tokens/s / the reference's on the same item, "
                    "the two asked back to back",
}
# Older reported files: ratios of two summary figures, measured one target after another.
RATIO_FIGURES = ("decode_tokens_per_s", "ttft_ms_p50")
# A reported file holds its figures under `targets`, or one set per machine kind under `machines`.
FIGURES = ("targets", "machines")
# lm-eval scores are reported as "lm_eval:TASK:METRIC" and checked like quality (an absolute margin).
LM_EVAL = "lm_eval:"


def lm_eval_figures(row: dict) -> dict[str, float]:
    return {f"{LM_EVAL}{task}:{metric}": value for task, figs in (row.get("lm_eval") or {}).items()
            for metric, value in figs.items() if isinstance(value, (int, float)) and not metric.endswith("_stderr")}


def lm_eval_margin(row: dict, figure: str, tol: dict) -> tuple[float, str]:
    """How far an lm-eval figure may move: quality_abs, or lm_eval_stderr standard errors of the measured
    figure (lm-eval's own `METRIC_stderr`) when that is wider. Returns the margin and a note for the table."""
    _, task, metric = figure.split(":", 2)
    stderr = ((row.get("lm_eval") or {}).get(task) or {}).get(f"{metric}_stderr")
    factor = tol.get("lm_eval_stderr") or 0
    if isinstance(stderr, (int, float)) and factor * stderr > tol["quality_abs"]:
        return round(factor * stderr, 4), f" ({factor:g} s.e.)"
    return tol["quality_abs"], ""


@dataclass
class Check:
    target: str
    figure: str
    reported: float | None
    measured: float | None
    tolerance: str
    ok: bool


def load(path: Path, what: str, key: str | tuple[str, ...] = "targets", about: str = "") -> dict:
    """A results or reported-figures JSON file that must be an object with `key` (a list or an object), or
    one of several keys."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SlmkitError(f"{what}: no file at {path}") from None
    except json.JSONDecodeError as exc:
        raise SlmkitError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    keys = (key,) if isinstance(key, str) else key
    if not isinstance(data, dict) or not any(isinstance(data.get(k), (list, dict)) for k in keys):
        raise SlmkitError(f"{path}: expected a JSON object with {' or '.join(repr(k) for k in keys)}{about}")
    return data


def _rows(bench: dict) -> dict[str, dict]:
    return {r["label"]: r for r in bench["targets"] if r.get("status", "ok") == "ok"}


def _paired_median(row: dict, ref: dict, series: str) -> float | None:
    """Median of row/ref over the requests both answered, matched by (pass, item)."""
    mine = dict(zip(row["paired"]["keys"], row["paired"][series], strict=True))
    pairs = [mine[k] / v for k, v in zip(ref["paired"]["keys"], ref["paired"][series], strict=True)
             if v and mine.get(k) is not None]
    return round(statistics.median(pairs), 4) if pairs else None


def ratios(bench: dict, reference: str) -> dict[str, dict[str, float | None]]:
    """Each target's speed figures relative to the reference target's, from one bench.json."""
    rows = _rows(bench)
    if reference not in rows:
        raise SlmkitError(f"speed reference '{reference}' is not a successful target of this bench "
                          f"(targets: {', '.join(rows) or 'none'})")
    ref = rows[reference]
    out = {}
    for label, row in rows.items():
        figs: dict[str, float | None] = {f"{f}_ratio": (round(row[f] / ref[f], 4) if row.get(f) and ref.get(f)
                                                          else None) for f in RATIO_FIGURES}
        if "paired" in row and "paired" in ref:
            figs |= {name: _paired_median(row, ref, series) for name, series in PAIRED.items()}
        out[label] = figs
    return out


def default_reference(bench: dict) -> str:
    """A local target: like with like. Two local models on one machine keep their ratio on a faster or slower
    machine; a remote endpoint's network and server do not scale with this machine."""
    rows = _rows(bench)
    local = [label for label, row in rows.items() if row.get("kind") in ("gguf", "hf")]
    return local[0] if local else bench["baseline"]


def _where(results: dict) -> str:
    """The machine a result file was measured on, in words, for a reported set's `about`."""
    m = results.get("machine") or {}
    return f"{m.get('cpus')} CPUs" + (f" ({m['cpu']}, {m['isa']})" if m.get("cpu") and m.get("isa") else "")


def write_reported(bench: dict, reference: str | None = None) -> dict:
    """The reported figures of a bench.json, with the default tolerances, ready to commit."""
    reference = reference or default_reference(bench)
    speed = ratios(bench, reference)
    targets = {label: {"quality": row.get("quality"), **lm_eval_figures(row),
                       **{k: speed[label].get(k) for k in PAIRED}}
               for label, row in _rows(bench).items()}
    return {"about": f"figures reported from a bench run of {bench.get('date')} on {_where(bench)}; speed as "
                     f"ratios to '{reference}', taken item by item",
            "metric": bench.get("metric"), "reference": reference, "tolerances": dict(DEFAULT_TOLERANCES),
            "meaning": dict(MEANING), "targets": targets}


def check(bench: dict, reported: dict, where: str = "reported") -> list[Check]:
    tol = {**DEFAULT_TOLERANCES, **(reported.get("tolerances") or {})}
    reference = reported.get("reference") or bench["baseline"]
    rows = _rows(bench)
    speed = ratios(bench, reference) if reference in rows else {}
    out: list[Check] = []
    if not isinstance(reported.get("targets"), dict):
        raise SlmkitError(f"{where}: expected 'targets', an object of target -> figures")
    for label, figs in reported["targets"].items():
        if not isinstance(figs, dict):
            raise SlmkitError(f"{where}: targets.{label} must be an object of figures")
        t = {**tol, **(figs.get("tolerances") or {})}
        for figure, want in figs.items():
            if figure == "tolerances" or want is None:
                continue
            if figure == "quality":
                got = rows.get(label, {}).get("quality")
                ok = got is not None and abs(got - want) <= t["quality_abs"]
                out.append(Check(label, figure, want, got, f"± {t['quality_abs']}", ok))
            elif figure.startswith(LM_EVAL):
                got = lm_eval_figures(rows.get(label, {})).get(figure)
                margin, why = lm_eval_margin(rows.get(label, {}), figure, t)
                ok = got is not None and abs(got - want) <= margin
                out.append(Check(label, figure, want, got, f"± {margin:.3g}{why}", ok))
            elif figure in PAIRED or (figure.endswith("_ratio") and figure[: -len("_ratio")] in RATIO_FIGURES):
                got = speed.get(label, {}).get(figure)
                ok = got is not None and want > 0 and max(got / want, want / got) <= t["speed_factor"]
                out.append(Check(label, f"{figure} (vs {reference})", want, got, f"× {t['speed_factor']}", ok))
            else:
                names = [*PAIRED, *(f + "_ratio" for f in RATIO_FIGURES)]
                raise SlmkitError(f"{where}: targets.{label}.{figure}: not a figure bench checks "
                                  f"(quality, {LM_EVAL}TASK:METRIC, {', '.join(names)})")
    return out


def _num(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "–"


def print_checks(checks: list[Check], console, title: str = "bench --check") -> None:
    from rich.table import Table

    table = Table(title=title)
    for name in ("target", "figure", "reported", "measured", "tolerance", "ok"):
        table.add_column(name, justify="right" if name in ("reported", "measured") else "left")
    for c in checks:
        table.add_row(c.target, c.figure, _num(c.reported), _num(c.measured), c.tolerance,
                      "[green]ok[/]" if c.ok else "[red]MISS[/]")
    console.print(table)


def verdict(checks: list[Check], what: str = "bench --check") -> None:
    """Raise StageFailed naming every figure outside its tolerance; return when all are within."""
    missed = [c for c in checks if not c.ok]
    if missed:
        raise StageFailed(f"{what}: {len(missed)} of {len(checks)} figures outside tolerance: "
                          + "; ".join(f"{c.target} {c.figure} (reported {_num(c.reported)}, measured "
                                      f"{_num(c.measured)}, {c.tolerance})" for c in missed))


def run_check(reported_path: Path, results_path: Path, console) -> list[Check]:
    """`slmkit bench --check REPORTED --results BENCH_JSON`: read both, check against the figures reported for
    the results' machine kind (core/reported.py), print the table, and raise StageFailed (exit 1) if a figure
    is outside its tolerance. Returns the checks."""
    reported, bench = load(reported_path, "--check", FIGURES), load(results_path, "--results")
    where = str(reported_path)
    kind, why, checks = check_by_kind(reported, bench, where, lambda view: check(bench, view, where),
                                      lambda c: not c.ok)
    print_checks(checks, console, title=f"bench --check ({why})")
    verdict(checks)
    console.print(f"[green]✓[/] all {len(checks)} reported figures reproduced within tolerance ({kind})")
    return checks


def write_reported_file(results_path: Path, reported_path: Path, reference: str | None, console) -> dict:
    """`slmkit bench --write-reported REPORTED --results BENCH_JSON`: the reported figures of a bench.json,
    with the default tolerances, written as its machine kind's set (other kinds' sets kept). Returns them."""
    bench = load(results_path, "--results")
    reported, kind = write_reported(bench, reference), result_kind(bench)
    write_set(reported_path, reported, kind, ("targets",))
    console.print(f"wrote {reported_path}: {len(reported['targets'])} targets measured on a {kind} machine, "
                  f"speed ratios vs '{reported['reference']}'")
    return reported
