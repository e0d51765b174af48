"""The demo's committed data is exactly what its seeded generator writes, and has the mess it claims."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generator_reproduces_committed_data(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("tickets_raw.jsonl", "tickets_eval.jsonl", "teacher_shots.jsonl", "route_traffic.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "recipes" / "data" / name).read_bytes(), name


def test_pile_is_messy_and_eval_is_held_out():
    raw = [json.loads(line) for line in (ROOT / "recipes/data/tickets_raw.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (ROOT / "recipes/data/tickets_eval.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in raw]
    assert len(texts) - len(set(texts)) >= 20  # exact duplicates
    assert sum(r["id"].startswith("near") for r in raw) >= 20 and sum(r["source"] == "misc" for r in raw) >= 20
    eval_tickets = {e["ticket"] for e in evals}
    assert sum(t in eval_tickets for t in texts) == 1  # exactly one planted leak, for decontamination to catch
    keys = {"customer_name", "product", "urgency", "order_id", "refund_requested"}
    assert all(set(e["answer"]) == keys for e in evals)
    assert {e["answer"]["urgency"] for e in evals} == {"high", "normal", "low"}
    assert any(e["answer"]["order_id"] is None for e in evals) and any(e["answer"]["order_id"] for e in evals)


def test_router_traffic_mixes_languages_and_is_new():
    """The router's traffic: English tickets and foreign-language ones, none in the pile or the eval set."""
    traffic = [json.loads(line) for line in (ROOT / "recipes/data/route_traffic.jsonl").read_text().splitlines()]
    raw = {json.loads(line)["text"] for line in (ROOT / "recipes/data/tickets_raw.jsonl").read_text().splitlines()}
    evals = {json.loads(line)["ticket"] for line in (ROOT / "recipes/data/tickets_eval.jsonl").read_text().splitlines()}
    langs = [t["lang"] for t in traffic]
    assert langs.count("en") == 32 and {"fr", "de", "es"} <= set(langs) and len(traffic) == 64
    assert not ({t["ticket"] for t in traffic} & (raw | evals))
    assert len({t["id"] for t in traffic}) == 64
