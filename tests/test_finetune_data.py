"""SFT data: reading JSONL, assistant-only labels through the chat template, truncation, packing isolation."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.finetune import sft_data
from slmkit.pipelines.finetune.sft_data import IGNORE


@pytest.fixture(scope="module")
def tok():
    from helpers import tiny_tokenizer

    return tiny_tokenizer()


def labelled_text(tok, ex) -> str:
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])


def test_labels_cover_only_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Order 42?"},
            {"role": "assistant", "content": "Shipped Monday."}, {"role": "user", "content": "Where?"},
            {"role": "assistant", "content": "Berlin."}]
    ex = sft_data.encode(tok, msgs)
    assert len(ex.input_ids) == len(ex.labels)
    assert labelled_text(tok, ex) == "Shipped Monday.<|im_end|>\nBerlin.<|im_end|>\n"
    # Everything the user or system wrote, and the role headers, stay unlabelled.
    unlabelled = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE])
    assert "Order 42?" in unlabelled and "Be brief." in unlabelled and "<|im_start|>assistant" in unlabelled
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(msgs, tokenize=False)


def test_prompt_response_records_and_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n\n"
                    + json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}) + "\n")
    convs = sft_data.read_conversations(good)
    assert convs[0] == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert len(convs) == 2
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"text": "x"}): "a prompt without a response",
        json.dumps({"prompt": "x"}): "a prompt without a response",
        json.dumps({"foo": "x"}): "a record needs",
        json.dumps({"messages": [{"role": "user", "content": "u"}]}): "no assistant message",
        json.dumps({"messages": [{"role": "bot", "content": "u"}]}): "messages[0]",
    }
    for line, expected in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + line + "\n")
        with pytest.raises(SlmkitError) as err:
            sft_data.read_conversations(bad)
        assert f"{bad}:2: {expected}" in str(err.value), str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SlmkitError, match="empty"):
        sft_data.read_conversations(empty)


def test_overlong_examples_truncated_or_dropped_and_counted(tok):
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The quick brown fox " * 20}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    n_short = len(sft_data.encode(tok, short).input_ids)
    stats = sft_data.EncodeStats()
    out = sft_data.encode_all(tok, [long, short], 40, "truncate", stats)
    assert [len(e.input_ids) for e in out] == [40, n_short] and stats.truncated == 1
    stats = sft_data.EncodeStats()
    out = sft_data.encode_all(tok, [long, short], 40, "drop", stats)
    assert len(out) == 1 and stats.dropped_too_long == 1
    # Truncated before the answer starts: nothing to learn, dropped and counted.
    prompt_only = [{"role": "user", "content": "The quick brown fox " * 20}, {"role": "assistant", "content": "ok"}]
    stats = sft_data.EncodeStats()
    assert sft_data.encode_all(tok, [prompt_only], 40, "truncate", stats) == [] and stats.dropped_no_target == 1


def test_missing_chat_template_is_a_clear_error_unless_a_default_is_named():
    from helpers import tiny_tokenizer

    bare = tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(SlmkitError, match="no chat template.*chatml"):
        sft_data.set_chat_template(bare, None, "my-model")
    assert sft_data.set_chat_template(bare, "chatml", "my-model") == "<|im_end|>"
    assert "<|im_start|>" in bare.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert sft_data.set_chat_template(bare, "gemma", "my-model") == "<end_of_turn>"
    ex = sft_data.encode(bare, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "Order 42"}])
    assert labelled_text(bare, ex) == "Order 42<end_of_turn>\n"
    assert bare.decode(ex.input_ids).startswith("<|im_start|><start_of_turn>user\nBe brief.")  # bos first


def test_pack_fits_rows_and_keeps_every_example():
    exs = [sft_data.Example([i] * n, [i] * n) for i, n in enumerate([5, 9, 3, 7, 2, 8])]
    rows = sft_data.pack(exs, 10)
    assert all(sum(len(e.input_ids) for e in row) <= 10 for row in rows)
    assert sorted(e.input_ids[0] for row in rows for e in row) == list(range(6))
    assert len(rows) == 4  # 34 tokens in rows of 10: first-fit decreasing needs the minimum, 4


def test_packing_never_lets_one_example_attend_to_another(tiny_model_dir, tok):
    """The logits of each example inside a packed row equal the logits of that example run alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    convs = [[{"role": "user", "content": c}, {"role": "assistant", "content": c[::-1]}]
             for c in ("Order 42 was shipped.", "Customer Alice reports", "Please reset my password")]
    exs = [sft_data.encode(tok, c) for c in convs]
    collate = sft_data.PackedCollator(tok.pad_token_id)
    # One packed row with all three, plus a shorter row so padding is exercised too.
    batch = collate([exs, exs[:1]])
    n_tokens = batch.pop("n_tokens")
    assert int(n_tokens) == sum(len(e.input_ids) for e in exs) + len(exs[0].input_ids)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        at = 0
        for ex in exs:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            k = len(ex.input_ids)
            assert torch.allclose(packed[0, at:at + k], alone, atol=1e-5), "cross-example attention in a packed row"
            # Each example's first label is masked: it would be predicted from the previous example.
            assert batch["labels"][0, at] == IGNORE
            at += k
        assert torch.allclose(packed[1, :len(exs[0].input_ids)], model(input_ids=torch.tensor([exs[0].input_ids])).logits[0],
                              atol=1e-5)
    assert (batch["labels"][1, len(exs[0].input_ids):] == IGNORE).all()
    # Without the block mask (plain causal over the row) the second example would see the first: the test
    # above can fail.
    plain = dict(batch)
    plain.pop("labels")
    plain["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        leaky = model(**plain).logits
    k0 = len(exs[0].input_ids)
    alone1 = model(input_ids=torch.tensor([exs[1].input_ids])).logits[0]
    assert not torch.allclose(leaky[0, k0:k0 + len(exs[1].input_ids)], alone1, atol=1e-3)
