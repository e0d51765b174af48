"""bench's pieces without models: metrics, speed statistics, cost arithmetic, target specs, task loading."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slmkit.evals.metrics import METRICS, exact_match, first_json_object, json_fields, token_f1
from slmkit.evals.tasks import TaskConfig, load_few_shot, load_items
from slmkit.pipelines import bench
from slmkit.pipelines.bench import check as bench_check
from slmkit.pipelines.bench.cost import CostConfig, cost_figures
from slmkit.pipelines.bench.speed import speed_stats
from slmkit.pipelines.bench.targets import TargetConfig
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.distill.teachers import completion_prompt

REF = {"customer_name": "Mateo Martin", "product": "TaskHub", "urgency": "low", "order_id": "ORD-80020",
       "refund_requested": False}


# ---------------------------------------------------------------- metrics

def test_json_fields_reads_the_first_object_through_fences_and_prose():
    out = 'Here you go:\n```json\n{"customer_name": " mateo  MARTIN", "product": "TaskHub", "urgency": "low", ' \
          '"order_id": "ORD-80020", "refund_requested": false}\n```\nAnything else? {"not": "this"}'
    s = json_fields(out, REF)
    assert s.value == 1.0 and not s.invalid_json and all(s.fields.values())


def test_json_fields_partial_and_missing_fields():
    out = '{"customer_name": "Mateo Martin", "product": "DataVault", "urgency": "low", "refund_requested": "false"}'
    s = json_fields(out, REF)
    assert s.value == pytest.approx(2 / 5)  # name and urgency; wrong product, missing order_id, "false" != false
    assert s.fields == {"customer_name": True, "product": False, "urgency": True, "order_id": False,
                        "refund_requested": False}


def test_json_fields_invalid_json_scores_zero_and_is_flagged():
    for out in ("", "customer_name: Mateo", '{"customer_name": "Mateo Martin",', "```json\n{'single': 1}\n```"):
        s = json_fields(out, REF)
        assert s.value == 0.0 and s.invalid_json and s.fields and not any(s.fields.values())


def test_json_fields_reference_may_be_a_json_string_and_braces_in_strings_are_fine():
    assert json_fields('{"a": "x}y", "b": null}', '{"a": "X}Y", "b": null}').value == 1.0
    assert first_json_object('text {"a": {"b": [1, 2]}} more') == {"a": {"b": [1, 2]}}
    with pytest.raises(ValueError):
        json_fields("{}", "not json")


def test_exact_match_and_token_f1():
    assert exact_match("The Answer!", "answer").value == 1.0
    assert exact_match("answer two", "answer").value == 0.0
    precision, recall = 1 / 3, 1 / 2  # "printer" is the one common token
    assert token_f1("the printer is broken", "printer broke").value == pytest.approx(
        2 * precision * recall / (precision + recall))
    f = token_f1("printer is broken", "printer broken now").value
    assert f == pytest.approx(2 / 3)  # 2 common tokens: precision 2/3, recall 2/3
    assert token_f1("", "").value == 1.0 and token_f1("x", "").value == 0.0
    assert set(METRICS) == {"exact_match", "token_f1", "json_fields"}


# ---------------------------------------------------------------- speed and cost

def _rec(ttft, e2e, p, c, **kw):
    return {"id": "x", "pass": 0, "text": "t", "ttft_s": ttft, "e2e_s": e2e, "prompt_tokens": p,
            "completion_tokens": c, "token_source": "tokenizer", **kw}


def test_speed_stats_aggregate_by_tokens_and_skip_errors():
    recs = [_rec(0.1, 1.1, 10, 11), _rec(0.3, 0.8, 30, 6), {"id": "y", "pass": 0, "error": "HTTP 500"}]
    s = speed_stats(recs)
    assert s["requests"] == 3 and s["ok"] == 2
    assert s["decode_tokens_per_s"] == pytest.approx((10 + 5) / (1.0 + 0.5), rel=1e-3)
    assert s["prompt_tokens_per_s"] == pytest.approx(40 / 0.4, rel=1e-3)
    assert s["ttft_ms_p50"] == pytest.approx(200) and s["ttft_ms_p95"] >= s["ttft_ms_p50"]
    assert s["mean_prompt_tokens"] == 20 and s["mean_completion_tokens"] == 8.5


def test_local_cost_is_hardware_price_over_measured_throughput():
    stats = {"mean_prompt_tokens": 100, "mean_completion_tokens": 50, "mean_e2e_s": 1.5}
    c = cost_figures("gguf", None, None, stats, CostConfig(hardware_usd_per_hour=0.36, queries_per_month=10_000))
    # 150 tokens / 1.5 s = 100 tok/s = 360,000 tok/h -> $0.36 / 0.36M tokens = $1 per 1M
    assert c["cost_per_1m_tokens_usd"] == pytest.approx(1.0)
    assert c["monthly_cost_usd"] == pytest.approx(150 * 10_000 * 1.0 / 1e6)
    assert "100.0 tokens/s" in c["cost_basis"]


def test_endpoint_cost_is_blended_by_the_token_mix_and_unknown_prices_stay_null():
    stats = {"mean_prompt_tokens": 300, "mean_completion_tokens": 100, "mean_e2e_s": 2.0}
    c = cost_figures("openai", 0.15, 0.60, stats, CostConfig(queries_per_month=1_000_000))
    assert c["cost_per_1m_tokens_usd"] == pytest.approx((0.15 * 300 + 0.60 * 100) / 400)
    assert c["monthly_cost_usd"] == pytest.approx(400 * 1_000_000 * c["cost_per_1m_tokens_usd"] / 1e6)
    for kind, pin, pout, cfg in (("openai", 0.15, None, CostConfig()), ("hf", None, None, CostConfig())):
        c = cost_figures(kind, pin, pout, stats, cfg)
        assert c["cost_per_1m_tokens_usd"] is None and c["monthly_cost_usd"] is None and "not given" in c["cost_basis"]


# ---------------------------------------------------------------- configs, specs, tasks

def test_target_specs(tmp_path):
    g = tmp_path / "m-Q4_K_M.gguf"
    g.write_bytes(b"GGUF")
    t = TargetConfig.model_validate(f"gguf:{g}")
    assert t.kind == "gguf" and t.path == g and t.default_label() == "m-Q4_K_M"
    t = TargetConfig.model_validate("openai:gpt-4o-mini@https://api.example.com/v1/")
    assert (t.model, t.base_url, t.api_key_env) == ("gpt-4o-mini", "https://api.example.com/v1", None)  # no key
    assert TargetConfig.model_validate("hf:smollm2-135m-instruct").model == "smollm2-135m-instruct"
    assert TargetConfig.model_validate({"kind": "gguf", "model": "smollm2-135m-instruct"}).default_label() \
        == "smollm2-135m-instruct"
    assert TargetConfig.model_validate({"kind": "gguf", "from": "quantize.Q4_K_M"}).default_label() == "Q4_K_M"
    bad = ["gguf", "tpu:x", "openai:gpt", f"gguf:{tmp_path}/missing.gguf",
           {"kind": "openai", "model": "m"}, {"kind": "openai", "serve": "x.gguf", "base_url": "http://h/v1"},
           {"kind": "gguf", "path": str(g), "from": "quantize.f16"}, {"kind": "gguf", "from": "quantize"},
           {"kind": "gguf", "path": str(g), "model": "smollm2-135m-instruct"}, {"kind": "hf"},
           {"kind": "gguf", "path": str(g), "delay_ms": 5}, {"kind": "gguf", "path": str(g), "colour": "red"}]
    for spec in bad:
        with pytest.raises(ValidationError):
            TargetConfig.model_validate(spec)


def test_bench_config_checks_labels(tmp_path):
    g = tmp_path / "a.gguf"
    g.write_bytes(b"GGUF")
    with pytest.raises(ValidationError, match="share the label"):
        bench.BenchConfig.model_validate({"targets": [f"gguf:{g}", f"gguf:{g}"]})
    with pytest.raises(ValidationError, match="not a target label"):
        bench.BenchConfig.model_validate({"targets": [f"gguf:{g}"], "baseline": "nope"})
    cfg = bench.BenchConfig.model_validate({"targets": [f"gguf:{g}", "openai:m@http://127.0.0.1:1/v1"]})
    assert bench.baseline_label(cfg, cfg.targets) == "m"  # the endpoint is the baseline by default


def test_task_loading_names_file_and_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"id": 1, "prompt": "a", "answer": "x"}\n\n{"prompt": "b"}\n')
    with pytest.raises(SlmkitError, match=r"t.jsonl:3: no 'answer' field"):
        load_items(p, TaskConfig())
    p.write_text('{"prompt": "a", "answer": "x"}\nnot json\n')
    with pytest.raises(SlmkitError, match=r"t.jsonl:2: not valid JSON"):
        load_items(p, TaskConfig())
    items = load_items(p, TaskConfig(limit=1))
    assert len(items) == 1 and items[0].id == "1"
    shots = tmp_path / "s.jsonl"
    shots.write_text(json.dumps({"prompt": "q1", "response": {"a": 1}}) + "\n")
    turns = load_few_shot(shots)
    assert turns == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": '{"a": 1}'}]
    # The completions route joins turns exactly as the distill teacher does (one shared function).
    assert completion_prompt([*turns, {"role": "user", "content": "q2"}]) == 'q1\n\n{"a": 1}\n\nq2\n\n'


def test_check_rejects_unknown_figures():
    result = {"baseline": "a", "targets": [{"label": "a", "status": "ok", "quality": 0.5, "decode_tokens_per_s": 10,
                                             "ttft_ms_p50": 100}]}
    with pytest.raises(SlmkitError, match="not a figure bench checks"):
        bench_check.check(result, {"targets": {"a": {"speed": 3}}})
    missing = bench_check.check(result, {"targets": {"b": {"quality": 0.5}}})
    assert len(missing) == 1 and not missing[0].ok


def test_an_lm_eval_figure_holds_within_two_standard_errors_or_quality_abs():
    def result(acc, stderr):
        return {"baseline": "a", "targets": [{"label": "a", "status": "ok", "quality": 0.5,
                                              "lm_eval": {"t": {"acc": acc, "acc_stderr": stderr}}}]}

    reported = {"tolerances": {"quality_abs": 0.05}, "targets": {"a": {"lm_eval:t:acc": 0.75}}}
    # 40 items at p=0.75: s.e. 0.0685, so three items either way (0.075) is within 2 s.e. (0.137) ...
    (c,) = bench_check.check(result(0.825, 0.0685), reported)
    assert c.ok and c.tolerance == "± 0.137 (2 s.e.)"
    (c,) = bench_check.check(result(0.6, 0.0685), reported)  # ... and six (0.15) is not
    assert not c.ok
    # A precise figure (s.e. 0.01) is held to quality_abs, never to less.
    (c,) = bench_check.check(result(0.81, 0.01), reported)
    assert not c.ok and c.tolerance == "± 0.05"
    (c,) = bench_check.check(result(0.79, 0.01), reported)
    assert c.ok
    # No standard error recorded: quality_abs.
    bare = {"baseline": "a", "targets": [{"label": "a", "status": "ok", "lm_eval": {"t": {"acc": 0.85}}}]}
    (c,) = bench_check.check(bare, reported)
    assert not c.ok and c.tolerance == "± 0.05"


def test_report_columns_drop_only_the_prefix_all_lm_eval_tasks_share():
    from slmkit.pipelines.bench.report import lm_eval_columns

    def bench_of(*tasks):
        return {"targets": [{"lm_eval": {t: {"acc": 0.5, "acc_stderr": 0.1} for t in tasks}}]}

    assert [h for h, _, _ in lm_eval_columns(bench_of("suite_urgency", "suite_product"))] == \
        ["urgency acc", "product acc"]
    assert [h for h, _, _ in lm_eval_columns(bench_of("hellaswag", "arc_easy"))] == ["hellaswag acc", "arc_easy acc"]
    assert [h for h, _, _ in lm_eval_columns(bench_of("slmkit_ticket_urgency"))] == ["slmkit_ticket_urgency acc"]
