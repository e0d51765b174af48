"""curate on a local Ray cluster (2 CPUs): the same kept records, byte for byte, as the local executor."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from rich.console import Console

from slmkit.pipelines.core.recipe import load_recipe
from slmkit.pipelines.core.runner import run_standalone
from slmkit.pipelines.curate import CurateConfig, curate
from slmkit.pipelines.curate.ray_chain import keep_first_walk

ray = pytest.importorskip("ray")
pytest.importorskip("polars")  # Ray Data's joins need it

QUIET = Console(quiet=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the module: curate joins a running cluster and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def both(config: dict, tmp_path: Path) -> dict[str, dict]:
    """Run the same curate section on each executor through the stage runner; the bytes of every output."""
    out = {}
    for executor in ("local", "ray"):
        cfg = CurateConfig.model_validate({**config, "executor": executor}, context={"base_dir": tmp_path})
        result = run_standalone("curate", cfg, tmp_path / executor, console=QUIET, force=True)
        out[executor] = {name: result.output(name).read_bytes() for name in ("train", "eval", "report")}
    return out


# Two minutes of CI on the slow machine for what the test below already checks on a pile with every filter family;
# the demo's own filters on Ray stay covered in `make test-slow`.
@pytest.mark.slow
def test_the_demo_recipe_curates_the_same_on_ray(tmp_path):
    section = load_recipe("demo").curate.model_dump(mode="json", exclude={"executor"})
    out = both(section, tmp_path)
    report = json.loads(out["local"]["report"])
    assert report["train"] > 100 and sum(r["removed"] for r in report["filters"]) > 0  # filters had work to do
    assert out["ray"] == out["local"]


# A chain: A~B and B~C (estimated Jaccard 0.81, 0.80) but not A~C (0.64). Keep-first keeps A and C, drops B;
# connected components would drop C too.
CHAIN_A = ("My TaskHub board lost every card I moved yesterday afternoon and the undo button does nothing at all. "
           "I rely on it for the weekly planning meeting with the whole design team, please look into it soon.")


def _edit(text: str, k: int, seed: int) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for i in rng.sample([i for i, c in enumerate(chars) if c.isalpha()], k):
        chars[i] = "x"
    return "".join(chars)


CHAIN_B = _edit(CHAIN_A, 5, 1)
CHAIN_C = _edit(CHAIN_B, 5, 101)


def pile_with_every_filter(tmp_path: Path) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_curate import generate  # the benchmark's pile: exact and near copies, templated tickets

    docs = [{"text": d["text"], "id": d["id"]} for d in generate(1200, seed=3)]
    extra = [CHAIN_A, CHAIN_B, CHAIN_C,
             "Please refund order ORD-55555, write to jane.doe@example.com or call +44 20 7946 0958 today.",
             "!!!! $$$$ %%%% ^^^^",  # quality: no words
             "Hello, I was charged for order ORD-90001 but the invoice says 12.00 EUR instead of the price."]
    rows = docs[:400] + [{"text": t, "id": 10_000 + i, "nested": {"k": [i, None]}} for i, t in enumerate(extra)] \
        + docs[400:]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"text": extra[-1]}) + "\n")
    return {"input": [str(raw)], "eval": [str(tmp_path / "eval.jsonl")], "fields": {"text": "text"},
            "split": {"eval_fraction": 0.1}, "ray": {"batch_size": 128},
            "filters": [{"type": "normalize"}, {"type": "pii"}, {"type": "dedup"}, {"type": "near_dedup"},
                        {"type": "quality"}, {"type": "decontaminate"},
                        {"type": "relevance", "method": "lexical", "lexical_threshold": 0.02,
                         "seeds": ["invoice order refund charged price", "board card undo planning team"]}]}


def test_every_filter_family_gives_the_same_records_and_report(tmp_path):
    out = both(pile_with_every_filter(tmp_path), tmp_path)
    report = json.loads(out["local"]["report"])
    by_type = {r["type"]: r for r in report["filters"]}
    # the comparison below means something only where each filter did some work
    assert by_type["pii"]["modified"] >= 1 and by_type["normalize"]["modified"] >= 1
    for kind in ("dedup", "near_dedup", "quality", "decontaminate", "relevance"):
        assert by_type[kind]["removed"] >= 1, kind
    kept = {json.loads(line)["text"] for name in ("train", "eval") for line in out["local"][name].splitlines()}
    assert CHAIN_A in kept and CHAIN_C in kept and CHAIN_B not in kept  # keep-first, not components
    assert out["ray"]["train"] == out["local"]["train"]
    assert out["ray"]["eval"] == out["local"]["eval"]
    assert json.loads(out["ray"]["report"]) == report


def test_keep_first_walk_drops_only_records_similar_to_a_kept_one():
    where = {i: f"f:{i}" for i in range(5)}
    # chain 0~1~2: 1 goes (like 0), 2 stays (its only match, 1, went); 3~4 and 0~4: 4 names the earliest, 0
    removed = keep_first_walk([(0, 1, 0.8), (1, 2, 0.8), (3, 4, 0.9), (0, 4, 0.75)], where)
    assert removed == {1: "near duplicate of f:0 (Jaccard ≈ 0.80)", 4: "near duplicate of f:0 (Jaccard ≈ 0.75)"}


def test_ray_executor_gives_the_error_a_local_run_gives(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "a ticket about an invoice"}) + "\n")
    cfg = CurateConfig.model_validate({"input": [str(raw)], "executor": "ray",
                                       "filters": [{"type": "decontaminate"}]})
    with pytest.raises(Exception, match="no eval sets to decontaminate against; set curate.eval"):
        curate(cfg, QUIET)
