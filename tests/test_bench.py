"""bench end to end on tiny models: a GGUF in-process, an HF folder, a real loopback server (slmkit serve over a
tiny GGUF, with a delay), a scripted endpoint that fails every second request, and one that is not there.

Checks the figures are present and sane, token counts are the tokenizer's count of the text, failures are
reported per request and per target without stopping the others, the API key goes nowhere, and `--check`
passes on the run's own figures and fails when one is moved out of tolerance.
"""

from __future__ import annotations

import io
import json
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import tiny_llama
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.pipelines import bench
from slmkit.pipelines.bench import check as bench_check
from slmkit.pipelines.core.errors import StageFailed
from slmkit.pipelines.core.runner import run_standalone
from slmkit.pipelines.quantize import gguf_export
from slmkit.pipelines.serving.server import free_port

SECRET = "sk-test-DO-NOT-LEAK-4242"
ITEMS = [
    {"id": "a", "prompt": "Ticket: Alice says the printer is broken.", "answer": {"name": "Alice", "issue": "printer"}},
    {"id": "b", "prompt": "Ticket: Bob cannot reset his password.", "answer": {"name": "Bob", "issue": "password"}},
    {"id": "c", "prompt": "Ticket: Order 42 never arrived in Berlin.", "answer": {"name": None, "issue": "shipping"}},
    {"id": "d", "prompt": "Ticket: Carol was billed twice.", "answer": {"name": "Carol", "issue": "billing"}},
]


class ScriptedEndpoint:
    """An OpenAI-style SSE endpoint that answers each prompt correctly (in a code fence, as chat models do),
    fails every second request with HTTP 500, and notes the Authorization headers it saw.
    Under /nousage it reports no token usage, so the client must count tokens itself, and every second answer's
    stream breaks off after its first piece."""

    def __init__(self):
        self.auth: list[str] = []
        self.calls = {"/v1": 0, "/nousage/v1": 0}
        self.order: list[str] = []  # the prefix of every request, in arrival order
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prefix = self.path.rsplit("/chat/completions", 1)[0]
                endpoint.auth.append(self.headers.get("Authorization", ""))
                endpoint.calls[prefix] += 1
                endpoint.order.append(prefix)
                if endpoint.calls[prefix] % 2 == 0 and prefix == "/nousage/v1":  # a stream that drops mid-answer
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self._event({"choices": [{"index": 0, "delta": {"content": "Sure:"}, "finish_reason": None}]})
                    self.close_connection = True
                    return
                if endpoint.calls[prefix] % 2 == 0:
                    data = b'{"error": {"message": "overloaded"}}'
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                prompt = body["messages"][-1]["content"]
                answer = next(i["answer"] for i in ITEMS if i["prompt"] == prompt)
                text = "Sure:\n```json\n" + json.dumps(answer) + "\n```"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
                for piece in pieces:
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                if prefix == "/v1" and body.get("stream_options", {}).get("include_usage"):
                    self._event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(pieces)}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _event(self, obj):
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bench-model")
    folder = tiny_llama(d / "tiny")
    return folder, gguf_export.export(folder, d / "tiny-f16.gguf").path


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    return path


@pytest.fixture(scope="module")
def ran(tiny, task_file, tmp_path_factory):
    """One bench over five targets; returns (bench.json, its folder, the scripted endpoint)."""
    folder, gguf = tiny
    out = tmp_path_factory.mktemp("bench") / "out"
    dead = free_port()  # nothing listens there
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_TEST_KEY", SECRET)
    with ScriptedEndpoint() as ep:
        config = bench.BenchConfig.model_validate({
            "targets": [
                f"gguf:{gguf}",
                {"kind": "hf", "path": str(folder), "label": "tiny-hf", "n_threads": 1},
                {"kind": "openai", "serve": str(gguf), "delay_ms": 60, "label": "served", "n_threads": 1},
                {"kind": "openai", "model": "scripted", "base_url": f"http://127.0.0.1:{ep.port}/v1",
                 "label": "flaky", "api_key_env": "BENCH_TEST_KEY", "price_input_per_1m": 0.15,
                 "price_output_per_1m": 0.60},
                {"kind": "openai", "model": "scripted", "base_url": f"http://127.0.0.1:{ep.port}/nousage/v1",
                 "label": "nousage"},
                {"kind": "openai", "model": "gone", "base_url": f"http://127.0.0.1:{dead}/v1", "label": "dead",
                 "timeout": 5},
            ],
            "task": {"data": str(task_file), "max_tokens": 12},
            "baseline": "flaky",
            "repeats": 2,
            "cost": {"hardware_usd_per_hour": 0.5, "queries_per_month": 1000},
        })
        run_standalone("bench", config, out)
    mp.undo()
    return json.loads((out / "bench.json").read_text()), out, ep


def _row(result, label):
    return next(r for r in result["targets"] if r["label"] == label)


def test_every_target_has_sane_figures(ran):
    result, out, _ = ran
    assert [r["label"] for r in result["targets"]] == ["tiny-f16", "tiny-hf", "served", "flaky", "nousage", "dead"]
    for label in ("tiny-f16", "tiny-hf", "served"):
        row = _row(result, label)
        assert row["status"] == "ok", row
        assert row["errors"]["count"] == 0
        assert row["requests"] == 8  # 4 prompts x 2 repeats, warm-up not counted
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p95"]
        assert row["e2e_ms_p50"] <= row["e2e_ms_p95"]
        assert row["decode_tokens_per_s"] > 0 and row["prompt_tokens_per_s"] > 0
        assert 0 <= row["quality"] <= 1
        for key in ("ttft_ms_p50", "ttft_ms_p95", "decode_tokens_per_s", "prompt_tokens_per_s", "peak_rss_mb",
                    "size_mb", "quality", "quality_retention_pct", "cost_per_1m_tokens_usd", "monthly_cost_usd",
                    "errors", "kind", "note"):
            assert key in row
    for label in ("tiny-f16", "tiny-hf"):  # local: own process memory, file size, hardware-priced cost
        row = _row(result, label)
        assert row["peak_rss_mb"] > 50 and row["size_mb"] > 0
        assert row["cost_per_1m_tokens_usd"] > 0 and "0.5/h" in row["cost_basis"]
    served = _row(result, "served")
    assert served["peak_rss_mb"] is None and served["size_mb"] is None
    assert served["ttft_ms_p50"] >= 60  # the stand-in's added network delay is felt by the client
    assert "local stand-in for a cloud API" in served["note"] and "+60 ms" in served["note"]
    assert served["cost_per_1m_tokens_usd"] is None and "not given" in served["cost_basis"]
    assert (out / "report.md").is_file() and (out / "latency.png").stat().st_size > 1000
    assert (out / "quality_cost.png").stat().st_size > 1000
    done = json.loads((out / "DONE.json").read_text())
    assert done["outputs"]["bench"] == "bench.json" and done["outputs"]["report"] == "report.md"
    assert set(done["metrics"]["quality"]) == {"tiny-f16", "tiny-hf", "served", "flaky", "nousage"}


def test_token_counts_are_the_tokenizers_count_of_the_text(ran, tiny):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    result, out, _ = ran
    folder, gguf = tiny
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(folder)
    counters = {"tiny-f16": lambda t: len(llm.tokenize(t.encode(), add_bos=False, special=False)),
                "tiny-hf": lambda t: len(tok(t, add_special_tokens=False)["input_ids"])}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for label, count in counters.items():
        mine = [s for s in samples if s["target"] == label]
        assert len(mine) == len(ITEMS)
        assert any(s["completion_tokens"] > 1 for s in mine)
        for s in mine:
            assert s["completion_tokens"] == count(s["output"]), s
            assert s["prompt_tokens"] > count(s["id"])
    flaky = [s for s in samples if s["target"] == "flaky" and "error" not in s]
    assert flaky and all(s["token_source"] == "usage" for s in flaky)
    assert _row(result, "nousage")["token_source"] == ["estimate"]


def test_failures_are_per_request_and_per_target(ran):
    result, out, _ = ran
    flaky = _row(result, "flaky")
    # Warm-up is call 1; the timed calls 2, 4, 6, 8 fail: items a and c of each pass.
    assert flaky["status"] == "ok" and flaky["requests"] == 8 and flaky["ok"] == 4
    assert flaky["errors"]["count"] == 4 and "HTTP 500" in flaky["errors"]["first"][0]
    assert flaky["quality"] == pytest.approx(0.5)  # the two answered items are right, the failed ones score 0
    assert flaky["field_accuracy"] == {"name": 0.5, "issue": 0.5}
    assert flaky["quality_retention_pct"] == 100.0
    nousage = _row(result, "nousage")
    assert nousage["quality"] == pytest.approx(0.5) and nousage["errors"]["count"] == 4
    assert "stream ended before the answer did" in nousage["errors"]["first"][0]
    dead = _row(result, "dead")
    assert dead["status"] == "failed" and "all 8 requests failed" in dead["error"]
    assert "FAILED" in (out / "report.md").read_text()
    # Cost of the endpoint: its prices blended by the measured token mix (11 prompt tokens from usage).
    c = flaky["mean_completion_tokens"]
    assert flaky["cost_per_1m_tokens_usd"] == pytest.approx((0.15 * 11 + 0.60 * c) / (11 + c), rel=1e-4)
    assert flaky["monthly_cost_usd"] == pytest.approx((11 + c) * 1000 * flaky["cost_per_1m_tokens_usd"] / 1e6,
                                                      rel=1e-3)


def test_api_key_is_sent_but_never_written(ran):
    _, out, ep = ran
    assert f"Bearer {SECRET}" in ep.auth  # the key did reach the endpoint
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".jsonl"):
            assert SECRET not in path.read_text(), path


def test_check_passes_on_own_figures_and_fails_when_moved(ran, tmp_path):
    from rich.console import Console

    result, out, _ = ran
    reported = bench_check.write_reported(result, reference="tiny-f16")
    checks = bench_check.check(result, reported)
    assert checks and all(c.ok for c in checks)
    assert {c.figure for c in checks} >= {"quality", "decode_ratio (vs tiny-f16)", "ttft_ratio (vs tiny-f16)"}
    assert set(reported["meaning"]) == {"ttft_ratio", "decode_ratio"}

    runner = CliRunner()
    rep = tmp_path / "reported.json"
    res = runner.invoke(app, ["bench", "--write-reported", str(rep), "--results", str(out / "bench.json"),
                              "--speed-reference", "tiny-f16"], standalone_mode=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["bench", "--check", str(rep), "--results", str(out / "bench.json")],
                        standalone_mode=False)
    assert res.exit_code == 0, res.output

    def run_check(figures: dict) -> str:
        """What `slmkit bench --check FILE --results bench.json` runs (pipelines' own), on these figures."""
        path = tmp_path / "moved.json"
        path.write_text(json.dumps(figures))
        printed = io.StringIO()
        bench_check.run_check(path, out / "bench.json", Console(file=printed, width=200))
        return printed.getvalue()

    kind = result["machine"]["isa"]  # written as the figures of this machine's kind
    assert set(json.loads(rep.read_text())["machines"]) == {kind}
    moved = json.loads(rep.read_text())
    moved["machines"][kind]["targets"]["tiny-hf"]["quality"] = min(1.0, result["targets"][1]["quality"] + 0.2) \
        if result["targets"][1]["quality"] < 0.5 else result["targets"][1]["quality"] - 0.2
    with pytest.raises(StageFailed, match="tiny-hf quality"):
        run_check(moved)
    moved = json.loads(rep.read_text())
    moved["machines"][kind]["targets"]["served"]["decode_ratio"] *= 1.6  # just outside the default 1.5x
    with pytest.raises(StageFailed, match=r"1 of \d+ figures outside tolerance: served decode_ratio"):
        run_check(moved)
    moved["tolerances"] = {"speed_factor": 1.7}  # the reported file may carry its own, looser tolerances
    assert "reported figures reproduced within tolerance" in run_check(moved)
    moved["tolerances"] = {"speed_factor": 1.5}
    rep.write_text(json.dumps(moved))
    res = runner.invoke(app, ["bench", "--check", str(rep), "--results", str(out / "bench.json")])
    assert res.exit_code == 1 and isinstance(res.exception, StageFailed)


def test_targets_are_asked_item_by_item_in_turn(ran):
    """Interleaved: each item goes to every target before the next item, so the two endpoints of one server
    see alternating requests (warm-up first), not one target's whole run and then the other's."""
    _, _, ep = ran
    assert ep.order == ["/v1", "/nousage/v1"] * (1 + len(ITEMS) * 2)


def test_served_ttft_without_the_injected_delay(ran):
    result, _, _ = ran
    served = _row(result, "served")
    assert served["injected_delay_ms"] == 60
    paired = served["paired"]
    assert len(paired["keys"]) == len(paired["ttft_compute_ms"]) == 8 and paired["keys"][0] == "0:a"
    assert served["ttft_compute_ms_p50"] == pytest.approx(statistics.median(paired["ttft_compute_ms"]), abs=0.01)
    assert served["ttft_compute_ms_p50"] < served["ttft_ms_p50"] - 55


def test_speed_ratios_are_taken_item_by_item():
    """A load step half way (every time doubles from the third item on) falls on both targets' same items;
    the paired ratio stays what the models make it (2), matched by (pass, item), skipping failed requests."""
    def row(label, ttft, kind="gguf"):
        return {"label": label, "kind": kind, "status": "ok", "ttft_ms_p50": 1.0, "decode_tokens_per_s": 1.0,
                "paired": {"keys": [f"0:{i}" for i in "abcd"], "ttft_compute_ms": ttft,
                           "decode_tokens_per_s": [100 / t if t else None for t in ttft]}}

    bench_json = {"baseline": "remote", "targets": [row("slow", [20, 20, 40, 40]), row("fast", [10, 10, 20, None]),
                                                    row("remote", [5, 5, 5, 5], kind="openai")]}
    got = bench_check.ratios(bench_json, "fast")
    assert got["slow"]["ttft_ratio"] == 2.0 and got["slow"]["decode_ratio"] == 0.5
    assert bench_check.default_reference(bench_json) == "slow"  # a local target, never the remote one


def test_stage_fails_only_when_every_target_fails(task_file, tmp_path):
    config = bench.BenchConfig.model_validate({
        "targets": [{"kind": "openai", "model": "x", "base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout": 2}],
        "task": {"data": str(task_file), "limit": 1}, "warmup": 0})
    with pytest.raises(StageFailed, match="every target failed"):
        run_standalone("bench", config, tmp_path / "out")
    assert not (tmp_path / "out" / "DONE.json").exists()


def test_empty_targets_bench_the_upstream_ggufs(tiny, task_file, tmp_path):
    """`bench: {}` in a recipe: every GGUF the quantize stage made, found through `from: quantize.KEY`."""
    from rich.console import Console

    from slmkit.pipelines.core.stage import StageContext, StageResult

    _, gguf = tiny
    upstream = {"quantize": StageResult("quantize", gguf.parent, {"f16": gguf.name, "report": "missing.json"})}
    out = tmp_path / "out"
    (out / ".state").mkdir(parents=True)
    ctx = StageContext(stage="bench", out=out, state=out / ".state", cache=tmp_path / "cache", upstream=upstream,
                       fingerprint="x", console=Console(file=io.StringIO()))
    config = bench.BenchConfig.model_validate({"task": {"data": str(task_file), "limit": 2, "max_tokens": 4},
                                               "warmup": 0})
    outcome = bench.run(config, ctx)
    result = json.loads((out / outcome.outputs["bench"]).read_text())
    (row,) = result["targets"]
    assert row["label"] == "f16" and row["model"] == str(gguf) and row["status"] == "ok"
    assert result["baseline"] == "f16" and row["quality_retention_pct"] in (None, 100.0)
    assert outcome.metrics["ttft_ms_p50"]["f16"] > 0
