"""Benchmark curate end to end on a generated pile with planted exact and near duplicates.

    python scripts/bench_curate.py                 # 100,000 documents, 2 processes → bench-results/curate.json
    python scripts/bench_curate.py --docs 5000     # a quick look
    python scripts/bench_curate.py --docs 1000000 --executor local --executor ray   # both executors, one pile

The pile (seeded) holds:
- distinct documents: free text drawn from a synthetic vocabulary, plus templated tickets that differ only in
  their order number and amount (distinct examples that a number-blind dedup would wrongly merge),
- exact duplicates of some of them (byte-identical, or differing only in case and whitespace),
- near duplicates: a few character typos, one or two replaced words, a greeting line added, a signature
  appended, or a typo, a replaced word and a greeting together — the edits a real pile is full of.
Documents are shuffled; in each group (an original and its copies) the first in file order is the one that
should survive. Figures: documents/s from reading the JSONL to writing train.jsonl, recall of planted near
duplicates (share removed), share of distinct documents removed, peak memory of the process and its workers.
Targets (issue #6): ≥ 2,000 docs/s, recall ≥ 95%, ≤ 1% distinct removed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import resource
import string
import sys
import tempfile
import time
from pathlib import Path

GREETINGS = ["Hi team,", "Hello,", "Good morning,", "Dear support,", "Hey there,"]
SIGNATURES = ["Sent from my phone", "Best regards", "Thanks in advance", "Cheers"]
TEMPLATE = ("Hello, I was charged for order ORD-{order} but the invoice says {amount} EUR instead of the "
            "price on your website. Please correct the invoice and confirm by email. Regards, {name}")
NAMES = ["Maria Lopez", "John Smith", "Aisha Khan", "Wei Chen", "Lukas Becker", "Sofia Rossi", "Omar Haddad"]


def vocabulary(rng: random.Random, size: int = 8000) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def free_text(rng: random.Random, vocab: list[str]) -> str:
    sentences = []
    for _ in range(rng.randint(3, 6)):
        words = [rng.choice(vocab) for _ in range(rng.randint(6, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def typo(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(chars))
        if chars[i].isalpha():
            chars[i] = rng.choice(string.ascii_lowercase)
    return "".join(chars)


def replace_words(rng: random.Random, text: str, vocab: list[str]) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(words))
        if not any(c.isdigit() for c in words[i]):  # the numbers are what makes a templated ticket distinct
            words[i] = rng.choice(vocab)
    return " ".join(words)


NEAR_EDITS = {
    "typo": lambda rng, t, v: typo(rng, t),
    "replace_words": replace_words,
    "greeting": lambda rng, t, v: f"{rng.choice(GREETINGS)}\n{t}",
    "signature": lambda rng, t, v: f"{t}\n{rng.choice(SIGNATURES)}",
    "combined": lambda rng, t, v: f"{rng.choice(GREETINGS)}\n{replace_words(rng, typo(rng, t), v)}",
}
EXACT_EDITS = {
    "identical": lambda rng, t: t,
    "case_and_spaces": lambda rng, t: "  " + t.upper().replace(" ", "  ", 3) + " \n",
}


def generate(n: int, seed: int = 0) -> list[dict]:
    """n documents: 80% distinct (5% of all of them templated), 10% exact and 10% near copies, shuffled."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    n_templated = n // 20
    n_distinct = int(n * 0.8)
    n_exact = n // 10
    n_near = n - n_distinct - n_exact
    originals = []
    for g in range(n_distinct):
        if g < n_templated:
            text = TEMPLATE.format(order=10000 + g, amount=f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
                                   name=rng.choice(NAMES))
        else:
            text = free_text(rng, vocab)
        originals.append({"group": g, "kind": "distinct", "text": text})
    docs = list(originals)
    for _ in range(n_exact):
        src = rng.choice(originals)
        edit = rng.choice(list(EXACT_EDITS))
        docs.append({"group": src["group"], "kind": f"exact:{edit}", "text": EXACT_EDITS[edit](rng, src["text"])})
    for _ in range(n_near):
        src = rng.choice(originals)
        edit = rng.choice(list(NEAR_EDITS))
        docs.append({"group": src["group"], "kind": f"near:{edit}", "text": NEAR_EDITS[edit](rng, src["text"], vocab)})
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = i
    return docs


def score(docs: list[dict], kept_ids: set[int]) -> dict:
    """In each group the first document in file order should survive and every later one should go."""
    first_of: dict[int, dict] = {}
    firsts, near, exact = [], [], []
    for d in docs:
        first = first_of.setdefault(d["group"], d)
        if first is d:
            firsts.append(d)
        elif d["kind"].startswith("near") or first["kind"].startswith("near"):
            near.append(d)  # an edited copy, or the original (or an exact copy) after an edited copy
        else:
            exact.append(d)
    near_removed = sum(d["id"] not in kept_ids for d in near)
    by_edit: dict[str, list[int]] = {}
    for d in near:
        edit = d["kind"] if d["kind"].startswith("near") else "original after an edited copy"
        by_edit.setdefault(edit, [0, 0])
        by_edit[edit][0] += d["id"] not in kept_ids
        by_edit[edit][1] += 1
    distinct_removed = sum(d["id"] not in kept_ids for d in firsts)
    return {
        "distinct_documents": len(firsts),
        "planted_exact": len(exact),
        "planted_near": len(near),
        "exact_recall": sum(d["id"] not in kept_ids for d in exact) / max(1, len(exact)),
        "near_recall": near_removed / max(1, len(near)),
        "near_recall_by_edit": {k: round(a / b, 4) for k, (a, b) in sorted(by_edit.items())},
        "distinct_removed": distinct_removed,
        "distinct_removed_fraction": distinct_removed / max(1, len(firsts)),
    }


class MemorySampler:
    """Peak memory of this process and its workers while curate runs, sampled every 0.2 s as PSS
    (proportional set size), so pages that forked workers share with the parent, or that Ray's workers map
    from its shared-memory object store, are counted once. Also each process's own peak: a Ray cluster
    started by the run is this process's children too (its GCS and raylet, whose children are the workers)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.per_process: dict[int, tuple[str, int]] = {}  # pid -> (name, peak PSS)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from slmkit.pipelines.core.proc_memory import tree_memory

        while not self.stop.wait(0.2):
            rows = tree_memory(self.proc)
            for r in rows:
                name, peak = self.per_process.get(r.pid, (r.name, 0))
                self.per_process[r.pid] = (name, max(peak, r.pss))
            self.peak = max(self.peak, sum(r.pss for r in rows))

    def workers(self) -> dict:
        """Peak PSS of the busiest worker (forked pool or Ray worker), and how many there were."""
        own = self.proc.pid
        peaks = [(name, peak) for pid, (name, peak) in self.per_process.items() if pid != own]
        workers = [peak for name, peak in peaks if name.startswith(("ray::", "python"))]
        system = [peak for name, peak in peaks if not name.startswith(("ray::", "python"))]
        return {"driver_peak_pss_mb": round(self.per_process.get(own, ("", 0))[1] / 2**20, 1),
                "workers_seen": len(workers),
                "worker_peak_pss_mb": round(max(workers, default=0) / 2**20, 1),
                "other_processes_peak_pss_mb": round(sum(system) / 2**20, 1)}

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def peak_rss_mb() -> dict:
    # ru_maxrss is in KiB on Linux; it includes the generated pile held by this script, and the children
    # figure is the largest single worker (its shared pages counted in full), not a sum.
    return {"parent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def run_one(executor: str, raw: Path, out: Path, truth: list[dict], args: argparse.Namespace, console) -> dict:
    from slmkit.pipelines.core.runner import run_standalone
    from slmkit.pipelines.curate import CurateConfig

    config = CurateConfig.model_validate(
        {"input": [str(raw)], "num_proc": args.num_proc, "split": {"eval_fraction": 0}, "executor": executor,
         "ray": {"num_cpus": args.num_proc},
         "filters": [{"type": "normalize"}, {"type": "dedup"}, {"type": "near_dedup"}, {"type": "quality"}]})
    gc.collect()
    with MemorySampler() as memory:
        start = time.perf_counter()
        result = run_standalone("curate", config, out, console=console, force=True)
        seconds = time.perf_counter() - start
    train = result.output("train").read_bytes()
    kept = {json.loads(line)["id"] for line in train.splitlines()}
    report = json.loads(result.output("report").read_text())
    figures = score(truth, kept)
    figures.update({"executor": executor, "documents": args.docs, "seconds": round(seconds, 2),
                    "docs_per_second": round(args.docs / seconds, 1),
                    "curate_peak_pss_mb": round(memory.peak / 2**20, 1), **memory.workers(),
                    "removed_by_filter": {r["filter"]: r["removed"] for r in report["filters"]},
                    "train_sha256": hashlib.sha256(train).hexdigest()})
    if executor == "local":
        figures.update(peak_rss_mb())
    return figures, config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--num-proc", type=int, default=2, help="local worker processes; CPUs of the Ray cluster")
    ap.add_argument("--executor", action="append", choices=["local", "ray"],
                    help="run on this executor (repeat for both, same pile); default: local")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="default: bench-results/curate.json (one executor) or curate_executors.json")
    args = ap.parse_args()
    executors = args.executor or ["local"]
    args.out = args.out or Path("bench-results/curate.json" if len(executors) == 1 else
                                "bench-results/curate_executors.json")

    from rich.console import Console

    console = Console(stderr=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    docs = generate(args.docs, args.seed)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        raw = Path(tmp) / "raw.jsonl"
        with raw.open("w") as fh:
            for d in docs:
                fh.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
        truth = [{"id": d["id"], "group": d["group"], "kind": d["kind"]} for d in docs]
        del docs  # the texts now live in the file; keep only the ground truth in memory
        for executor in executors:
            runs[executor], config = run_one(executor, raw, Path(tmp) / executor, truth, args, console)
    targets = {"docs_per_second": ">= 2000", "near_recall": ">= 0.95", "distinct_removed_fraction": "<= 0.01"}
    passed = {name: {"docs_per_second": f["docs_per_second"] >= 2000, "near_recall": f["near_recall"] >= 0.95,
                     "distinct_removed_fraction": f["distinct_removed_fraction"] <= 0.01} for name, f in runs.items()}
    out = {"bench": "curate", "targets": targets,
           "config": {"num_proc": args.num_proc, "seed": args.seed,
                      "filters": [f.model_dump(exclude={"boilerplate"}) for f in config.filters]},
           # the machine is shared: the load average says how much of the 2 cores the run really had
           "host": {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": _cpus(),
                    "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if len(runs) == 1:
        out.update(figures=runs[executors[0]], passed=passed[executors[0]])
    else:
        same = len({f["train_sha256"] for f in runs.values()}) == 1
        out.update(runs=runs, passed=passed, same_train_jsonl=same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print_json(data=out)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
