"""lm-eval through its own API on local targets: slmkit's ticket tasks end to end on a tiny HF model and its
F16 GGUF, and the GGUF adapter checked against lm-eval's HFLM request by request (same weights, same
log-likelihoods), with the hub switched off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.evals import lm_eval_run
from slmkit.evals.lm_eval_run import open_lm, run_lm_eval
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.quantize import gguf_export

TICKETS = Path(lm_eval_run.__file__).parents[1] / "recipes/data/tickets_eval.jsonl"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _requests(kind_args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind_args[0], doc={}, arguments=args, idx=i) for i, args in enumerate(kind_args[1])]


def _ticket_items(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in TICKETS.read_text().splitlines()[:n]]
    ctx = "Support ticket:\n{}\n\nQuestion: How urgent is this ticket: high, normal or low?\nAnswer:"
    return [(ctx.format(r["ticket"]), f" {c}") for r in rows for c in ("high", "normal", "low")]


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_ticket_tasks_run_end_to_end(kind, tiny_model_dir, tiny_gguf):
    path = tiny_gguf if kind == "gguf" else tiny_model_dir
    res = run_lm_eval(kind, path, ["slmkit_ticket_urgency", "slmkit_ticket_product"], limit=4, n_threads=1)
    assert set(res) == {"slmkit_ticket_urgency", "slmkit_ticket_product"}
    for metrics in res.values():
        assert 0.0 <= metrics["acc"] <= 1.0 and metrics["acc"] * 4 == round(metrics["acc"] * 4)  # 4 items
        assert metrics["acc_stderr"] >= 0


def test_gguf_adapter_scores_like_hflm(tiny_model_dir, tiny_gguf):
    """Same weights (fp32 HF vs F16 GGUF), same lm-eval requests: the same log-likelihoods, greedy flags and
    rolling log-likelihoods. This is what shows the GGUF adapter tokenises and scores as lm-eval means."""
    items = _ticket_items(3) + [("Order 42 was", " shipped on Monday to Berlin."), ("", "The quick brown fox")]
    texts = ["The invoice number is INV-1001 and the total is 250 EUR. " * 3]  # one window, BOS-prefixed
    with open_lm("hf", tiny_model_dir, n_threads=1) as hf:
        hf_ll = hf.loglikelihood(_requests(("loglikelihood", items)), disable_tqdm=True)
        hf_roll = hf.loglikelihood_rolling(_requests(("loglikelihood_rolling", [(t,) for t in texts])),
                                           disable_tqdm=True)
    with open_lm("gguf", tiny_gguf, n_threads=1) as gg:
        gg_ll = gg.loglikelihood(_requests(("loglikelihood", items)), disable_tqdm=True)
        gg_roll = gg.loglikelihood_rolling(_requests(("loglikelihood_rolling", [(t,) for t in texts])),
                                           disable_tqdm=True)
        assert gg.max_length == hf.max_length == 256  # the model's trained context, as HFLM reads it
    assert len(gg_ll) == len(items)
    for (a, ga), (b, gb) in zip(hf_ll, gg_ll, strict=True):
        assert a < 0 and abs(a - b) < 1e-2 and ga == gb
    assert abs(hf_roll[0] - gg_roll[0]) < 1e-2 and hf_roll[0] < -50


def test_rolling_windows_cover_a_text_longer_than_the_context(tiny_gguf):
    """Past n_ctx the text is scored in windows; every token is scored once, so the total keeps growing."""
    text = "Customer Alice reports that the printer is broken. " * 12  # ~600 byte tokens > 256
    with open_lm("gguf", tiny_gguf, n_threads=1) as gg:
        n = len(gg.tok_encode(text))
        assert n > gg.max_length
        whole, half = gg.loglikelihood_rolling(_requests(("loglikelihood_rolling", [(text,), (text[:200],)])),
                                               disable_tqdm=True)
    assert whole < half < 0


def test_generate_until_is_greedy_and_stops(tiny_gguf):
    with open_lm("gguf", tiny_gguf, n_threads=1) as gg:
        free, = gg.generate_until(_requests(("generate_until", [("Order 42 was", {"max_gen_toks": 12})])),
                                  disable_tqdm=True)
        assert free and len(gg.tok_encode(free)) <= 12
        stop = free[3:5]
        cut, = gg.generate_until(_requests(("generate_until", [("Order 42 was", {"until": [stop],
                                                                                  "max_gen_toks": 12})])),
                                 disable_tqdm=True)
        assert cut == free[:free.index(stop)]
        # Greedy: under the adapter's own log-likelihood every generated token is the argmax.
        (_, greedy), = gg.loglikelihood(_requests(("loglikelihood", [("Order 42 was", free)])), disable_tqdm=True)
        assert greedy


def test_task_yaml_path_with_relative_data(tmp_path, tiny_gguf):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "yes_no.jsonl").write_text(
        "\n".join(json.dumps({"q": q, "a": a}) for q, a in [("Is 2 even?", "yes"), ("Is 3 even?", "no")] * 2))
    task = tmp_path / "yes_no.yaml"
    task.write_text("task: my_yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/yes_no.jsonl\n"
                    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}} Answer:'\n"
                    "doc_to_choice: ['yes', 'no']\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n")
    res = run_lm_eval("gguf", tiny_gguf, [str(task)], n_threads=1)
    assert list(res) == ["my_yes_no"] and res["my_yes_no"]["acc"] in (0.0, 0.5, 1.0)


def test_user_errors_name_the_task_or_file(tmp_path, tiny_gguf):
    with pytest.raises(SlmkitError, match="lm-eval task 'nope'.*slmkit_ticket_urgency"):
        run_lm_eval("gguf", tiny_gguf, ["nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files: missing.jsonl\n")
    with pytest.raises(SlmkitError, match=r"bad\.yaml: dataset_kwargs\.data_files 'missing\.jsonl'"):
        run_lm_eval("gguf", tiny_gguf, [str(bad)])
    with pytest.raises(SlmkitError, match="no GGUF file"):
        run_lm_eval("gguf", tmp_path / "none.gguf", ["slmkit_ticket_urgency"])
    with pytest.raises(SlmkitError, match="not a model folder"):
        run_lm_eval("hf", tmp_path, ["slmkit_ticket_urgency"])


SMOLLM2_HF = Path.home() / ".cache/slmkit/models/smollm2-135m-instruct"


@pytest.mark.slow
def test_real_smollm2_gguf_and_hf_agree(tmp_path):
    """SmolLM2-135M-Instruct: the HF folder (fp32) and its own F16 GGUF give the same log-likelihoods on the
    ticket task's requests (F16 rounding over 30 layers allows a little more than the tiny model)."""
    if not (SMOLLM2_HF / "config.json").is_file():
        pytest.skip("run `slmkit models prepare smollm2-135m-instruct` first")
    f16 = gguf_export.export(SMOLLM2_HF, tmp_path / "smollm2-f16.gguf").path
    items = _ticket_items(2)
    with open_lm("hf", SMOLLM2_HF, n_threads=2) as hf:
        hf_ll = hf.loglikelihood(_requests(("loglikelihood", items)), disable_tqdm=True)
    with open_lm("gguf", f16, n_threads=2) as gg:
        gg_ll = gg.loglikelihood(_requests(("loglikelihood", items)), disable_tqdm=True)
    diffs = [abs(a - b) for (a, _), (b, _) in zip(hf_ll, gg_ll, strict=True)]
    assert max(diffs) < 5e-2, diffs
    # The ranking of the three labels, which is what acc reads, is the same for every ticket.
    rank = lambda lls: [max(range(3), key=lambda j: lls[i + j][0]) for i in range(0, len(lls), 3)]  # noqa: E731
    assert rank(hf_ll) == rank(gg_ll)


def test_gguf_chat_template_renders_like_the_hf_tokenizer(tiny_model_dir, tiny_gguf):
    """lm-eval's apply_chat_template with a gen_prefix (the start of the answer left open): the GGUF adapter,
    rendering the template the GGUF carries, gives the very text transformers gives for the same folder."""
    from transformers import AutoTokenizer

    chat = [{"role": "user", "content": "Extract the ticket as JSON."},
            {"role": "assistant", "content": '{"product": "'}]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    want_open = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False,
                                        continue_final_message=True)
    want_prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    with open_lm("gguf", tiny_gguf, n_threads=1) as lm:
        assert lm_eval_run.has_chat_template(lm)
        assert lm.apply_chat_template(chat, add_generation_prompt=False) == want_open
        assert lm.apply_chat_template(chat[:1], add_generation_prompt=True) == want_prompt


def test_ticket_tasks_score_in_the_json_answer_the_recipe_asks_for():
    """The ticket tasks put the demo's own prompt first and score a label where the JSON answer would hold it,
    after the ground-truth fields before it (never the label itself)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(lm_eval_run.TASK_DIR), include_defaults=False)
    row = json.loads(TICKETS.read_text().splitlines()[0])
    for name, field, before in (("slmkit_ticket_product", "product", '"customer_name": "'),
                                ("slmkit_ticket_urgency", "urgency", '"product": "')):
        task = manager.load_task_or_group([lm_eval_run._task_config(name, manager)])
        (task,) = task.values()
        doc = next(iter(task.test_docs()))
        assert task.doc_to_text(doc) == row["prompt"]
        prefix = task.resolve_field(doc, task.config.gen_prefix)
        assert before in prefix and prefix.endswith(f'"{field}": "') and row["answer"][field] not in prefix[-12:]
