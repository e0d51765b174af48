"""A teacher or bench target with several base URLs (a pool), against small fake OpenAI-compatible servers on
127.0.0.1: requests spread, the per-endpoint cap holds, a dead endpoint is skipped and nothing is paid twice."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import ScriptEndpoint, distill_ctx
from pydantic import ValidationError

from slmkit.pipelines import distill
from slmkit.pipelines.backends import ClientSpec, Request, make_client
from slmkit.pipelines.backends.pool import EndpointPool
from slmkit.pipelines.bench.targets import TargetConfig
from slmkit.pipelines.distill.teachers import TeacherConfig


class FakeEndpoint:
    """Answers each chat request with a text naming its prompt; counts answers per prompt and the most requests
    in flight at once. `die_after` answers, it hangs up on what it holds and refuses connections from then on.
    The HTTP side is helpers.ScriptEndpoint with this object's `reply` as its script."""

    def __init__(self, die_after: int | None = None, port: int = 0):
        self.answered: Counter = Counter()
        self.in_flight = self.peak = 0
        self.die_after, self.dead, self.lock = die_after, False, threading.Lock()
        self.closed = threading.Event()  # set once the port is released (kill() closes in the background)
        self.http = ScriptEndpoint(self.reply, port=port).start()
        self.server, self.url = self.http.server, self.http.url

    def reply(self, body: dict) -> tuple:
        if not self.enter():
            return ("hangup",)  # a connection-type failure at the client
        time.sleep(0.02)  # so that requests overlap and the cap is tested
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.in_flight -= 1
            if self.die_after is not None and sum(self.answered.values()) >= self.die_after:
                self.kill()
                return ("hangup",)
            self.answered[prompt] += 1
        return (200, {}, {"choices": [{"message": {"content": f"answer to {prompt}"}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 4}})

    def enter(self) -> bool:
        with self.lock:
            if self.dead:
                return False
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return True

    def kill(self) -> None:
        self.dead = True
        threading.Thread(target=self.close, daemon=True).start()  # shutdown() waits for serve_forever's loop

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.closed.set()


@pytest.fixture
def endpoints():
    made: list[FakeEndpoint] = []

    def make(die_after: int | None = None, port: int = 0) -> FakeEndpoint:
        made.append(FakeEndpoint(die_after, port))
        return made[-1]
    yield make
    for e in made:
        if not e.dead:
            e.close()


def _prompts(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(n)))
    return path


_ctx = distill_ctx  # the distill stage in-process (tests/helpers.py)


def _config(urls: list[str], prompts: Path, **teacher) -> distill.DistillConfig:
    t = {"kind": "openai", "model": "fake", "base_url": urls, "concurrency": 4, "timeout": 30, "retries": 4,
         "backoff": 0.01, **teacher}
    return distill.DistillConfig.model_validate({"teacher": t, "prompts": prompts, "max_tokens": 4,
                                                 "max_failed_share": 1})


def _report(tmp_path: Path, name: str = "out") -> dict:
    return json.loads((tmp_path / name / "report.json").read_text())


def test_requests_spread_over_the_pool_within_the_cap(tmp_path, endpoints):
    a, b = endpoints(), endpoints()
    res = distill.run(_config([a.url, b.url], _prompts(tmp_path, 16), concurrency=6, per_endpoint_concurrency=2),
                      _ctx(tmp_path))
    assert res.metrics["answered"] == 16
    assert a.answered and b.answered  # both got some
    assert a.peak <= 2 and b.peak <= 2  # counted at the servers
    assert sum((a.answered + b.answered).values()) == 16


def test_a_dead_endpoint_is_skipped_and_nothing_is_answered_twice(tmp_path, endpoints):
    a, b = endpoints(die_after=3), endpoints()
    res = distill.run(_config([a.url, b.url], _prompts(tmp_path, 12)), _ctx(tmp_path))
    assert res.metrics["answered"] == 12 and res.metrics["failed"] == 0
    both = a.answered + b.answered
    assert set(both) == {f"prompt {i}" for i in range(12)} and set(both.values()) == {1}
    retried = _report(tmp_path)["retried"]
    assert retried and all(kind.endswith(f"@{a.url}") for kind in retried), retried


def test_kill_and_rerun_asks_nothing_already_answered(tmp_path, endpoints):
    from slmkit.pipelines.serving.server import free_port

    # Ports from serve's range (18000-19999), below the kernel's ephemeral range: while the servers are down no
    # client connection can take them as its source port, so they can be bound again. A port the kernel hands
    # out (port 0) can be, and the rebind then fails with EADDRINUSE (seen with the slow tests running beside).
    a = endpoints(die_after=2, port=free_port())
    b = endpoints(die_after=2, port=free_port())
    prompts = _prompts(tmp_path, 8)
    first = distill.run(_config([a.url, b.url], prompts, retries=0, concurrency=2), _ctx(tmp_path, "first"))
    answered = a.answered + b.answered
    assert first.metrics["answered"] == 4 == sum(answered.values())
    # The same endpoints back up (same URLs, so the same cache keys: the pool's URLs name the teacher there),
    # once the dead ones have released their ports.
    assert a.closed.wait(30) and b.closed.wait(30)
    c, d = (endpoints(port=int(e.url.split(":")[2].split("/")[0])) for e in (a, b))
    second = distill.run(_config([c.url, d.url], prompts, retries=0, concurrency=2), _ctx(tmp_path, "second"))
    assert second.metrics["answered"] == 8
    assert not set(c.answered + d.answered) & set(answered)  # the 4 answers of the first run came from the cache


def test_a_bench_target_pool_spreads_its_requests(endpoints):
    a, b = endpoints(), endpoints()
    target = TargetConfig.model_validate({"kind": "openai", "model": "fake", "base_url": [a.url, b.url]})
    client = make_client(ClientSpec(kind="openai", location=target.base_url, model="fake", per_endpoint=1))
    assert isinstance(client, EndpointPool)
    for i in range(4):
        client.complete(Request(messages=[{"role": "user", "content": f"q{i}"}]))
    client.close()
    assert a.answered and b.answered
    assert [s["answered"] for s in client.stats()] == [2, 2]


def test_a_single_url_stays_a_string():
    assert TeacherConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1").base_url == "http://127.0.0.1:1/v1"


@pytest.mark.parametrize("model", [TeacherConfig, TargetConfig])
def test_a_bad_url_in_the_pool_names_the_key_not_the_secret(model):
    secret = "sk-abcdefghijklmnop1234"
    with pytest.raises(ValidationError) as err:
        model.model_validate({"kind": "openai", "model": "m",
                              "base_url": ["http://127.0.0.1:1/v1", f"http://127.0.0.1:2/v1?api_key={secret}"]})
    text = str(err.value)
    assert "base_url" in text and "credentials" in text and secret not in text
