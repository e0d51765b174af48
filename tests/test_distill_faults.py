"""distill under faults (issue 14), against the real SmolLM2 server behind test_distill's fault proxy: the failure
budget, failure kinds, SIGINT/SIGTERM, and retry waits. No test waits on the machine's speed: stalls and held
requests last until the test releases them, and every timeout a test sets is far above an answer's time."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from test_distill import GGUF, MODEL, Proxy, _config, _ctx, _prompts

from slmkit.pipelines import distill
from slmkit.pipelines.core.errors import SlmkitError, StageFailed
from slmkit.pipelines.core.recipe import load_recipe
from slmkit.pipelines.core.runner import Run
from slmkit.pipelines.serving.server import free_port, serve_gguf

pytestmark = pytest.mark.skipif(not GGUF.is_file(), reason="SmolLM2 GGUF not installed")
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def server():
    with serve_gguf(GGUF, n_threads=1) as base:
        yield base


@pytest.fixture
def proxy(server):
    p = Proxy(server)
    yield p
    p.close()


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _cached(tmp_path: Path) -> int:
    db = tmp_path / "cache/distill_responses.sqlite"
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM responses").fetchone()[0] if db.exists() else 0


# ---------------------------------------------------------------- 1. the failure budget

def test_failed_requests_fail_the_run_and_a_rerun_asks_only_those(tmp_path, proxy):
    """The report's case: every third request gets HTTP 500. The stage must not be DONE (a rerun would skip it
    and the prompts would be lost); the rerun asks the failed prompts and nothing else."""
    teacher = {"kind": "openai", "model": MODEL, "base_url": proxy.url, "concurrency": 1, "retries": 0,
               "timeout": 60}
    recipe = tmp_path / "flaky.yaml"  # JSON is YAML
    recipe.write_text(json.dumps({"name": "flaky", "distill": {"teacher": teacher, "max_tokens": 4,
                                                               "prompts": str(_prompts(tmp_path, 6))}}))
    proxy.faults = ["ok", "ok", "500"] * 2
    run = Run.open(load_recipe(recipe), tmp_path / "runs")
    with pytest.raises(StageFailed, match=r"2 of 6 requests \(http_500: 2\).*max_failed_share"):
        run.execute(console=Console(quiet=True))
    assert {r["stage"]: r["state"] for r in run.status()}["distill"] == "failed"
    assert not list((tmp_path / "runs").rglob("DONE.json"))
    assert proxy.requests == 6

    res = Run.open(load_recipe(recipe), tmp_path / "runs").execute(console=Console(quiet=True))
    assert res["distill"].metrics["answered"] == 6 and res["distill"].metrics["failed"] == 0
    assert proxy.requests == 6 + 2  # the 4 answers received the first time came from the cache


def test_validation_drops_are_reported_not_failed(tmp_path, proxy):
    proxy.faults = ["empty"]  # a well-formed answer with no text: validation's too_short, not a request failure
    cfg = _config(proxy.url, _prompts(tmp_path, 2), concurrency=1, distill_keys={"validate_retries": 0})
    res = distill.run(cfg, _ctx(tmp_path))
    assert (res.metrics["answered"], res.metrics["dropped"], res.metrics["failed"]) == (1, 1, 0)
    report = _report(tmp_path / "out")
    assert report["rejections"] == {"too_short": 1} and report["request_failures"] == {}


# ---------------------------------------------------------------- 2. failures counted by kind

def test_each_request_failure_is_counted_by_kind(tmp_path, proxy):
    proxy.faults = ["500", "429", "garbage", "reset", "stall"]
    # retries=0: each fault ends its prompt. The stall is held until the test ends, so it times out at 3 s
    # whatever the machine's speed; the real answer trickles in from its first moment (keepalive), so it never
    # times out however slow the machine.
    proxy.keepalive = True
    cfg = _config(proxy.url, _prompts(tmp_path, 6), concurrency=1, retries=0, timeout=3)
    with pytest.raises(StageFailed) as err:
        distill.run(cfg, _ctx(tmp_path))
    kinds = {"http_500": 1, "http_429": 1, "malformed_body": 1, "connection_reset": 1, "timeout": 1}
    assert "5 of 6 requests" in str(err.value)
    assert all(f"{k}: 1" in str(err.value) for k in kinds), str(err.value)
    report = _report(tmp_path / "out")
    assert report["request_failures"] == kinds and report["answered"] == 1 and report["failed"] == 5
    assert "request_failed" not in json.dumps(report)


def test_server_down_is_connection_refused(tmp_path):
    cfg = _config(f"http://127.0.0.1:{free_port()}/v1", _prompts(tmp_path, 1), retries=1,
                  distill_keys={"max_failed_share": 1})
    with pytest.raises(SlmkitError, match="no usable answer"):  # within the budget, but nothing to write
        distill.run(cfg, _ctx(tmp_path))
    report = _report(tmp_path / "out")
    assert report["request_failures"] == {"connection_refused": 1}
    assert report["retried"] == {"connection_refused": 1}


# ---------------------------------------------------------------- 3. interruption

class _Child:
    """distill in a child process, as a user's `slmkit distill` would be, its stderr read line by line."""

    def __init__(self, tmp_path: Path, proxy: Proxy, prompts: Path, **teacher):
        script = f"""
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with SIGINT ignored
sys.path.insert(0, {str(TESTS)!r})
from rich.console import Console
from test_distill import _config, _ctx
from slmkit.pipelines import distill
ctx = _ctx(Path({str(tmp_path)!r}))
ctx.console = Console(file=sys.stderr, width=200)
try:
    distill.run(_config({proxy.url!r}, Path({str(prompts)!r}), **{teacher!r}), ctx)
except KeyboardInterrupt:
    sys.exit(130)
"""
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def said(self, text: str, timeout: float = 120) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in ln for ln in self.lines), timeout)

    def until(self, cond: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_new_requests_and_keeps_those_in_flight(tmp_path, proxy, sig):
    prompts = _prompts(tmp_path, 6)
    proxy.hold.set()  # every request waits at the proxy until released: two are in flight at the signal
    child = _Child(tmp_path, proxy, prompts, concurrency=2)
    try:
        child.until(lambda: proxy.held == 2)
        child.proc.send_signal(sig)
        assert child.said("interrupted"), "".join(child.lines)
        proxy.release.set()  # the two in flight are answered now; nothing else may be sent
        assert child.proc.wait(timeout=120) == 130, "".join(child.lines)
    finally:
        child.close()
    assert proxy.requests == 2 and _cached(tmp_path) == 2  # both answers in flight kept, no new request
    assert not (tmp_path / "out/train.jsonl").exists()
    proxy.hold.clear()
    res = distill.run(_config(proxy.url, prompts), _ctx(tmp_path, "resumed"))
    assert res.metrics["answered"] == 6 and proxy.requests == 6  # the resumed run asked only the other 4


def test_second_interrupt_leaves_at_once(tmp_path, proxy):
    proxy.hold.set()  # never released: only the second interrupt can end the wait for these two
    # The wait for requests in flight is bounded by the timeout: 600 s, so leaving early is the second signal's doing.
    child = _Child(tmp_path, proxy, _prompts(tmp_path, 6), concurrency=2, timeout=600)
    try:
        child.until(lambda: proxy.held == 2)
        child.proc.send_signal(signal.SIGINT)
        assert child.said("interrupted"), "".join(child.lines)
        child.proc.send_signal(signal.SIGINT)
        assert child.proc.wait(timeout=120) == 130, "".join(child.lines)
    finally:
        child.close()
    assert proxy.requests == 2 and proxy.held == 2
    assert "Traceback" not in "".join(child.lines)


# ---------------------------------------------------------------- 4. retry waits

def _within(seconds: float, fn: Callable[[], object]) -> object:
    """fn() on a daemon thread: a wait that is not capped fails the test instead of hanging the suite."""
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_retry_after_is_capped(tmp_path, proxy):
    proxy.faults = ["429-day"]  # Retry-After: 86400
    cfg = _config(proxy.url, _prompts(tmp_path, 1), max_retry_wait=0.2)
    res = _within(120, lambda: distill.run(cfg, _ctx(tmp_path)))
    assert res.metrics["answered"] == 1 and proxy.requests == 2
    assert _report(tmp_path / "out")["retried"] == {"http_429": 1}


def test_interrupt_ends_a_retry_wait(tmp_path, proxy):
    proxy.faults = ["429-day"]
    child = _Child(tmp_path, proxy, _prompts(tmp_path, 1), max_retry_wait=3600)  # an hour's wait, unless cut
    try:
        child.until(lambda: proxy.requests == 1)
        child.proc.send_signal(signal.SIGINT)
        assert child.proc.wait(timeout=120) == 130, "".join(child.lines)
    finally:
        child.close()
    assert proxy.requests == 1  # no retry was sent after the interrupt
