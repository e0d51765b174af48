"""bench runs lm-eval tasks (log-likelihood, over local data) on its hf and gguf targets through lm-eval's own
API; the scores land in bench.json and report.md and are checked by --check like quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_llama
from pydantic import ValidationError

from slmkit.pipelines import bench
from slmkit.pipelines.bench import check as bench_check
from slmkit.pipelines.core.runner import run_standalone
from slmkit.pipelines.quantize import gguf_export

TASK = "slmkit_ticket_urgency"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-lm-eval")
    folder = tiny_llama(d / "tiny")
    gguf = gguf_export.export(folder, d / "tiny-f16.gguf").path
    task = d / "task.jsonl"
    task.write_text("".join(json.dumps({"id": str(i), "prompt": f"Say {i}", "answer": str(i)}) + "\n"
                            for i in range(2)))

    def one(name: str, tasks: list[str]) -> dict:
        config = bench.BenchConfig.model_validate({
            "targets": [{"kind": "gguf", "path": str(gguf), "label": "g", "n_threads": 1},
                        {"kind": "hf", "path": str(folder), "label": "h", "n_threads": 1}],
            "task": {"data": str(task), "metric": "exact_match", "max_tokens": 4},
            "warmup": 0, "lm_eval": {"tasks": tasks, "limit": 3}})
        run_standalone("bench", config, d / name)
        return json.loads((d / name / "bench.json").read_text()) | {"_dir": str(d / name)}

    return one("good", [TASK]), one("broken", ["no_such_task"])


def _row(result: dict, label: str) -> dict:
    return next(r for r in result["targets"] if r["label"] == label)


def test_scores_for_both_local_kinds_in_json_and_report(ran):
    good, _ = ran
    for label in ("g", "h"):
        acc = _row(good, label)["lm_eval"][TASK]["acc"]
        assert 0 <= acc <= 1
    # The same tiny model as an F16 GGUF and as an HF folder ranks the choices the same way.
    assert _row(good, "g")["lm_eval"][TASK]["acc"] == _row(good, "h")["lm_eval"][TASK]["acc"]
    report = (Path(good["_dir"]) / "report.md").read_text()
    # One task: its column keeps its whole name (only a prefix that several tasks share is dropped).
    assert f"lm-eval: {TASK} acc" in report and f"| {TASK} acc |" in report


def test_a_broken_task_is_recorded_per_target_and_the_rest_stands(ran):
    _, broken = ran
    for label in ("g", "h"):
        row = _row(broken, label)
        assert row["status"] == "ok" and row["quality"] is not None and row["ttft_ms_p50"] > 0
        assert "no_such_task" in row["lm_eval_error"] and "lm_eval" not in row


def test_check_covers_lm_eval_figures(ran):
    good, _ = ran
    reported = bench_check.write_reported(good, "g")
    figure = f"lm_eval:{TASK}:acc"
    assert figure in reported["targets"]["g"]
    assert all(c.ok for c in bench_check.check(good, reported))
    moved = json.loads(json.dumps(reported))
    margin, _ = bench_check.lm_eval_margin(_row(good, "g"), figure, bench_check.DEFAULT_TOLERANCES)
    moved["targets"]["g"][figure] += margin + 0.01
    misses = [c for c in bench_check.check(good, moved) if not c.ok]
    assert [(c.target, c.figure) for c in misses] == [("g", figure)]


def test_an_endpoint_cannot_run_lm_eval():
    with pytest.raises(ValidationError, match="lm_eval.targets: 'api' is an endpoint"):
        bench.BenchConfig.model_validate({
            "targets": [{"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "label": "api"}],
            "lm_eval": {"tasks": [TASK], "targets": ["api"]}})
