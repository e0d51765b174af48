"""One openai client over several base URLs of the same model (a pool), built by `make_client` when a config's
`base_url` is a list, so distill's teacher and bench's targets both get it.

Each request goes to the endpoint with the fewest requests in flight (round robin among ties), never beyond
`per_endpoint` at once. An attempt that fails below HTTP (refused, reset, closed, timeout) benches its endpoint
for `cooldown` seconds; the caller's RetryPolicy then sends the request again, to another endpoint. Attempts
are sequential, so a request is never at two endpoints at once. Failure kinds carry the endpoint
(`connection_refused@URL`), so a run's counts show which endpoint failed.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import Counter
from typing import Annotated, Any

from pydantic import AfterValidator, Discriminator, Field, Tag

from slmkit.pipelines.backends.base import ClientSpec, Completion, Interrupted, Request, RetryableError
from slmkit.pipelines.backends.retry import NO_RETRY, RetryPolicy
from slmkit.pipelines.core import secrets

COOLDOWN_S = 30.0
# Failures that say the endpoint, not the request, is the problem: another endpoint may well answer.
CONNECTION_KINDS = {"timeout", "connect_error", "connection_refused", "connection_reset", "connection_closed",
                    "transport_error"}


def _distinct(urls: list[str]) -> list[str]:
    if len(set(urls)) != len(urls):
        raise ValueError("the pool lists an endpoint twice")
    return urls


# A config's `base_url`: one URL (kept a string, as before pools) or a list. Tagged by form, so an error names
# only the form given; the tags hold "[" so that recipe error paths leave them out.
BaseURL = Annotated[
    Annotated[secrets.EndpointURL, Tag("url[str]")]
    | Annotated[list[secrets.EndpointURL], Field(min_length=1), AfterValidator(_distinct), Tag("pool[list]")],
    Discriminator(lambda v: "pool[list]" if isinstance(v, list) else "url[str]"),
]


class _Endpoint:
    def __init__(self, client: Any, url: str):
        self.client, self.url = client, url
        self.in_flight, self.benched_until = 0, 0.0
        self.sent, self.answered, self.failures = 0, 0, Counter()


class EndpointPool:
    """The Client interface over one OpenAIClient per URL; retries are the pool's, so members never retry."""

    cooldown = COOLDOWN_S

    def __init__(self, spec: ClientSpec, policy: RetryPolicy = NO_RETRY, stop: threading.Event | None = None):
        from slmkit.pipelines.backends.openai_client import OpenAIClient

        self.spec, self.policy, self.stop = spec, policy, stop or threading.Event()
        # Every member reads the key from the one variable the config names, for its own URL only.
        self.endpoints = [_Endpoint(OpenAIClient(dataclasses.replace(spec, location=url), NO_RETRY, self.stop), url)
                          for url in spec.location]
        self.cap = spec.per_endpoint or 1_000_000  # unset: no cap beyond the caller's own concurrency
        self._turn = itertools.count()
        self._cond = threading.Condition()

    def count(self, text: str) -> int:
        return self.endpoints[0].client.count(text)

    def complete(self, request: Request) -> Completion:
        return self.policy.call(lambda: self._attempt(request), self.stop)

    def _attempt(self, request: Request) -> Completion:
        ep = self._acquire()
        try:
            answer = ep.client.complete(request)
        except RetryableError as exc:
            self._release(ep, exc.kind)
            raise RetryableError(str(exc), exc.retry_after, kind=f"{exc.kind}@{ep.url}") from None
        except BaseException:
            self._release(ep, "request_error")
            raise
        self._release(ep, None)
        return answer

    def _acquire(self) -> _Endpoint:
        """The least busy endpoint under its cap, waiting for a slot; benched ones only when all are benched
        (then the one back soonest: probing it is a retry like any other)."""
        with self._cond:
            while True:
                if self.stop.is_set():
                    raise Interrupted("stopped before the request was sent")
                free = [e for e in self.endpoints if e.in_flight < self.cap]
                now = time.monotonic()
                alive = [e for e in free if e.benched_until <= now]
                if free and (alive or all(e.benched_until > now for e in self.endpoints)):
                    ep = self._pick(alive or sorted(free, key=lambda e: e.benched_until)[:1])
                    ep.in_flight += 1
                    ep.sent += 1
                    return ep
                self._cond.wait(0.2)  # short slices: `stop` and cooldowns ending are seen promptly

    def _pick(self, candidates: list[_Endpoint]) -> _Endpoint:
        turn, n = next(self._turn), len(self.endpoints)
        return min(candidates, key=lambda e: (e.in_flight, (self.endpoints.index(e) - turn) % n))

    def _release(self, ep: _Endpoint, failure: str | None) -> None:
        with self._cond:
            ep.in_flight -= 1
            if failure is None:
                ep.answered += 1
            else:
                ep.failures[failure] += 1
                if failure in CONNECTION_KINDS:
                    ep.benched_until = time.monotonic() + self.cooldown
            self._cond.notify_all()

    def stats(self) -> list[dict]:
        """Per endpoint: attempts sent, answers, failures by kind (for reports; no key inside)."""
        with self._cond:
            return [{"base_url": e.url, "sent": e.sent, "answered": e.answered, "failures": dict(e.failures)}
                    for e in self.endpoints]

    def close(self) -> None:
        for e in self.endpoints:
            e.client.close()
