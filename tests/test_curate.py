"""The curate stage: readers and field mapping, bad input, filter order, decontamination, report, split, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.core.runner import run_standalone
from slmkit.pipelines.curate import CurateConfig, curate

QUIET = Console(quiet=True)

TICKETS = [
    "Hi, I was charged twice for CloudSync this month. Order ORD-10001. Thanks, Maria Lopez",
    "Hello, PayFlow crashes every time I open it since the last update. Regards, John Smith",
    "Dear team, please change the email address on my TaskHub account. Aisha Khan",
    "Good morning, could DataVault support exporting to CSV? No rush. Wei Chen",
    "Hey, my MailPilot invoice shows the wrong plan, I am on Basic not Pro. Lukas Becker",
    "Hi there, files I saved in CloudSync yesterday are gone today. Please help. Sofia Rossi",
]


def cfg(tmp_path: Path, **kw) -> CurateConfig:
    return CurateConfig.model_validate(kw, context={"base_dir": tmp_path})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pile(tmp_path: Path, rows: list | None = None) -> Path:
    rows = rows if rows is not None else [{"id": i, "text": t} for i, t in enumerate(TICKETS)]
    return write_jsonl(tmp_path / "raw.jsonl", rows)


# ---------------------------------------------------------------- readers and mapping


def test_reads_every_format_to_the_same_records(tmp_path):
    import pandas as pd

    rows = [{"question": f"q{i} about invoices and refunds", "answer": f"a{i} is the answer"} for i in range(4)]
    frame = pd.DataFrame(rows)
    paths = {"jsonl": write_jsonl(tmp_path / "d.jsonl", rows), "json": tmp_path / "d.json",
             "csv": tmp_path / "d.csv", "parquet": tmp_path / "d.parquet"}
    paths["json"].write_text(json.dumps({"data": rows}))
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    fields = {"prompt": "question", "response": "answer"}
    for name, path in paths.items():
        out = curate(cfg(tmp_path, input=[str(path)], fields=fields, filters=[], split={"eval_fraction": 0}), QUIET)
        got = [(r["prompt"], r["response"]) for r in out["train"]]
        assert got == [(r["question"], r["answer"]) for r in rows], name


def test_text_folder_one_document_per_file(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document text")
    (folder / "sub" / "b.md").write_text("second document text")
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    out = curate(cfg(tmp_path, input=["docs"], filters=[], split={"eval_fraction": 0}), QUIET)
    assert [(r["text"], r["source"]) for r in out["train"]] == [("first document text", "a.txt"),
                                                                 ("second document text", "sub/b.md")]


def test_chat_messages_and_sharegpt_roles(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi"}]}]
    out = curate(cfg(tmp_path, input=[str(pile(tmp_path, rows))], fields={"messages": "conversations"}, filters=[],
                     split={"eval_fraction": 0}), QUIET)
    assert out["train"][0]["messages"] == [{"role": "user", "content": "hello there"},
                                           {"role": "assistant", "content": "hi"}]


def test_auto_mapping_and_carried_fields(tmp_path):
    rows = [{"prompt": "p one", "response": "r one", "id": 7, "label": "x"}]
    out = curate(cfg(tmp_path, input=[str(pile(tmp_path, rows))], filters=[], split={"eval_fraction": 0}), QUIET)
    assert {k: v for k, v in out["train"][0].items() if k != "_where"} == rows[0]


def test_mapping_naming_a_missing_field_is_an_error(tmp_path):
    with pytest.raises(SlmkitError, match=r"raw.jsonl:1: curate.fields.prompt names the field 'question'"):
        curate(cfg(tmp_path, input=[str(pile(tmp_path))], fields={"prompt": "question", "response": "answer"}), QUIET)


def test_mapping_must_be_a_known_shape(tmp_path):
    with pytest.raises(SlmkitError, match="curate.fields"):
        curate(cfg(tmp_path, input=[str(pile(tmp_path))], fields={"response": "text"}), QUIET)


def test_prompt_only_records_for_distill(tmp_path):
    rows = [{"question": t} for t in TICKETS[:2]]
    out = curate(cfg(tmp_path, input=[str(pile(tmp_path, rows))], fields={"prompt": "question"}, filters=[],
                     split={"eval_fraction": 0}), QUIET)
    assert [r["prompt"] for r in out["train"]] == TICKETS[:2] and "response" not in out["train"][0]


def test_empty_or_unusable_input_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SlmkitError, match="no usable records"):
        curate(cfg(tmp_path, input=["empty.jsonl"]), QUIET)
    with pytest.raises(SlmkitError, match="cannot tell the format"):
        (tmp_path / "data.xyz").write_text("x")
        curate(cfg(tmp_path, input=["data.xyz"]), QUIET)


# ---------------------------------------------------------------- malformed lines


def malformed(tmp_path: Path) -> Path:
    rows = [{"text": TICKETS[0]}, '{"text": "broken', {"text": TICKETS[1]}, [1, 2], {"text": None}, {"text": TICKETS[2]}]
    return pile(tmp_path, rows)


def test_malformed_lines_skipped_and_named(tmp_path):
    out = curate(cfg(tmp_path, input=[str(malformed(tmp_path))], filters=[], split={"eval_fraction": 0}), QUIET)
    rep = out["report"]
    assert rep["read"] == 3 and rep["malformed_skipped"] == 3
    wheres = [e["where"].rsplit("/", 1)[-1] for e in rep["malformed_examples"]]
    assert wheres == ["raw.jsonl:2", "raw.jsonl:4", "raw.jsonl:5"]


def test_bad_utf8_line_is_named_and_skippable(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b'{"text": "fine line of text"}\n{"text": "caf\xe9"}\n{"text": "another fine line"}\n')
    out = curate(cfg(tmp_path, input=[str(path)], filters=[], split={"eval_fraction": 0}), QUIET)
    assert out["report"]["read"] == 2 and out["report"]["malformed_examples"][0]["where"].endswith("raw.jsonl:2")
    with pytest.raises(SlmkitError, match=r"raw.jsonl:2: not UTF-8"):
        curate(cfg(tmp_path, input=[str(path)], on_error="fail"), QUIET)


def test_malformed_line_fails_with_file_and_line(tmp_path):
    with pytest.raises(SlmkitError, match=r"raw.jsonl:2: not valid JSON"):
        curate(cfg(tmp_path, input=[str(malformed(tmp_path))], on_error="fail"), QUIET)


def test_filter_options_are_validated_per_type(tmp_path):
    with pytest.raises(ValidationError, match="threshold"):
        cfg(tmp_path, input=[str(pile(tmp_path))], filters=[{"type": "near_dedup", "threshold": 1.5}])
    with pytest.raises(ValidationError, match="num_perm"):
        cfg(tmp_path, input=[str(pile(tmp_path))], filters=[{"type": "dedup", "num_perm": 64}])
    with pytest.raises(ValidationError, match="type"):
        cfg(tmp_path, input=[str(pile(tmp_path))], filters=[{"type": "sparkle"}])


# ---------------------------------------------------------------- filters in order, report


def test_filter_order_is_respected(tmp_path):
    # "A  b" and "a b" are exact duplicates only after normalisation collapses the double space... and case-folding
    # is on by default, so use punctuation spacing that only normalize fixes: NFKC turns the fullwidth text into ASCII.
    rows = [{"text": "Ｉｎｖｏｉｃｅ ｗｒｏｎｇ ｐｌｅａｓｅ ｈｅｌｐ"}, {"text": "Invoice wrong please help"}]
    path = pile(tmp_path, rows)
    first = curate(cfg(tmp_path, input=[str(path)], filters=[{"type": "normalize"}, {"type": "dedup"}],
                       split={"eval_fraction": 0}), QUIET)
    second = curate(cfg(tmp_path, input=[str(path)], filters=[{"type": "dedup"}, {"type": "normalize"}],
                        split={"eval_fraction": 0}), QUIET)
    assert [r["filter"] for r in first["report"]["filters"]] == ["normalize", "dedup"]
    assert first["report"]["train"] == 1 and second["report"]["train"] == 2


def test_decontamination_removes_planted_eval_item_and_counts_add_up(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        {"prompt": f"Extract the support ticket below as JSON with the customer name and product.\n\n{t}", "answer": {"name": t.split()[-1]}} for t in TICKETS[3:]])
    rows = [{"text": t} for t in TICKETS[:3]] + [{"text": TICKETS[4]}, {"text": TICKETS[0]},
                                                  {"text": "lorem ipsum dolor sit amet, consectetur adipiscing"}]
    config = cfg(tmp_path, input=[str(pile(tmp_path, rows))], eval=[str(evals)], split={"eval_fraction": 0.25})
    out = curate(config, QUIET)
    rep = out["report"]
    by = {r["filter"]: r for r in rep["filters"]}
    assert by["decontaminate"]["removed"] == 1 and "eval.jsonl:2" in by["decontaminate"]["examples"][0]["reason"]
    assert by["dedup"]["removed"] == 1 and by["quality"]["removed"] == 1
    kept = {r["text"] for r in out["train"] + out["eval"]}
    assert kept == set(TICKETS[:3])
    assert rep["read"] == sum(r["removed"] for r in rep["filters"]) + rep["train"] + rep["eval"]
    for r in rep["filters"]:
        assert r["in"] == r["kept"] + r["removed"]
        assert len(r["examples"]) == min(r["removed"], 5)


def test_empty_result_names_the_filter(tmp_path):
    config = cfg(tmp_path, input=[str(pile(tmp_path))],
                 filters=[{"type": "normalize"}, {"type": "quality", "name": "strict", "min_words": 500}])
    with pytest.raises(SlmkitError, match=r"filter 2 'strict' removed all 6 remaining records \(first: words"):
        curate(config, QUIET)


def test_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"text": f"ticket number {i} about a broken invoice for customer {i}"} for i in range(40)]
    config = cfg(tmp_path, input=[str(pile(tmp_path, rows))], filters=[], split={"eval_fraction": 0.25, "seed": 3})
    a, b = curate(config, QUIET), curate(config, QUIET)
    assert [r["text"] for r in a["eval"]] == [r["text"] for r in b["eval"]] and len(a["eval"]) == 10
    assert not {r["text"] for r in a["eval"]} & {r["text"] for r in a["train"]}
    other = curate(config.model_copy(update={"split": config.split.model_copy(update={"seed": 4})}), QUIET)
    assert [r["text"] for r in other["eval"]] != [r["text"] for r in a["eval"]]


# ---------------------------------------------------------------- the stage and its verb


def test_stage_writes_train_eval_report(tmp_path):
    config = cfg(tmp_path, input=[str(pile(tmp_path))], prompt_template="Extract as JSON:\n{text}",
                 split={"eval_fraction": 0.34})
    result = run_standalone("curate", config, tmp_path / "out", console=QUIET)
    train, held = read_jsonl(result.output("train")), read_jsonl(result.output("eval"))
    assert len(train) == 4 and len(held) == 2
    assert all(r["prompt"] == f"Extract as JSON:\n{r['text']}" and "_where" not in r for r in train + held)
    report = json.loads(result.output("report").read_text())
    assert report["train"] == 4 and result.metrics["read"] == 6


def test_cli_standalone_and_bad_input(tmp_path):
    from typer.testing import CliRunner

    from slmkit.cli.app import app

    raw = pile(tmp_path)
    result = CliRunner().invoke(app, ["curate", "--input", str(raw), "--out", str(tmp_path / "o"),
                                      "--eval-fraction", "0", "--filter", "dedup", "--filter", "quality"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "curate.json").read_text())
    assert [r["filter"] for r in report["filters"]] == ["dedup", "quality"] and report["eval"] == 0
    bad = subprocess.run([sys.executable, "-m", "slmkit", "curate", "--input", str(malformed(tmp_path)),
                          "--out", str(tmp_path / "b"), "--on-error", "fail"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "raw.jsonl:2: not valid JSON" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "b" / "DONE.json").exists()


def test_hf_dataset_id_through_datasets(tmp_path):
    """A dataset id goes to `datasets.load_dataset`; a local dataset folder stands in for the hub here."""
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"instruction": f"question {i} about refunds", "output": f"answer {i}"}
                                         for i in range(3)])
    out = curate(cfg(tmp_path, hf_dataset=str(folder), fields={"prompt": "instruction", "response": "output"},
                     filters=[], split={"eval_fraction": 0}), QUIET)
    assert [r["prompt"] for r in out["train"]] == [f"question {i} about refunds" for i in range(3)]
    assert out["train"][0]["_where"].endswith("row 1")
    with pytest.raises(SlmkitError, match="cannot load the Hugging Face dataset"):
        curate(cfg(tmp_path, hf_dataset=str(tmp_path / "nope")), QUIET)
