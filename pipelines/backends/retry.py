"""One retry policy, chosen per caller: a paid teacher call retries with backoff; a bench request does not (a
retried request would report the time of two), so bench takes `NO_RETRY` and records the failure."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from slmkit.pipelines.backends.base import Completion, Interrupted, RetryableError

T = TypeVar("T", bound=Completion)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 0.5  # first wait in seconds; doubles each time, with jitter
    max_wait: float = 60.0  # longest wait, whatever the backoff or a server's Retry-After asks for

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `attempt + 1`: exponential backoff with jitter (so that many
        workers failing together do not retry together), at least a server's Retry-After, at most `max_wait`
        (a server asking for a day must not park a worker for a day)."""
        delay = self.backoff * (2 ** attempt) * (0.5 + random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_wait)

    def call(self, attempt_once: Callable[[], T], stop: threading.Event | None = None) -> T:
        """Run `attempt_once` until it answers or the retries are spent. `stop`, once set, sends no further
        attempt and cuts a wait short (an attempt in flight finishes)."""
        stop = stop or threading.Event()
        retried: list[str] = []
        for attempt in range(self.retries + 1):
            if stop.is_set():  # checked before every attempt: an interrupted caller pays for nothing new
                raise Interrupted("stopped before the request was sent")
            try:
                answer = attempt_once()
            except RetryableError as exc:
                if attempt == self.retries:
                    what = f"gave up after {attempt + 1} attempts: {exc}" if self.retries else str(exc)
                    raise RetryableError(what, exc.retry_after, kind=exc.kind, retried=retried) from None
                retried.append(exc.kind)
                # An Event wait, not time.sleep: setting `stop` ends the wait at once.
                if stop.wait(self.delay(attempt, exc.retry_after)):
                    raise Interrupted("stopped while waiting to retry") from None
                continue
            answer.requests, answer.retried = attempt + 1, retried
            return answer
        raise AssertionError("unreachable: the last attempt returns or raises")


NO_RETRY = RetryPolicy(retries=0)


def retry_after(headers) -> float | None:
    """A server's Retry-After (seconds or an HTTP date; `retry-after-ms` too), None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
