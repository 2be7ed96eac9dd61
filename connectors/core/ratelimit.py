"""Client-side rate limiting sized from a vendor's documented limits (no 429 on a healthy run)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Window:
    """At most ``limit`` requests in any ``seconds``-long window."""

    limit: int
    seconds: float


class Limiter(Protocol):
    """The seam: a local limiter now; a Prefect global-concurrency-limit lease later."""

    def acquire(self) -> None:
        """Block until one request may be sent."""

    def penalise(self, seconds: float) -> None:
        """The vendor throttled us anyway: hold every caller for ``seconds``."""


class SlidingWindowLimiter:
    """Thread-safe sliding-window log over zero or more windows (zero: only 429 pauses apply).

    A sliding log of N per W never exceeds what a fixed window, a sliding window or a token
    bucket of the same N and W allow, so it is safe whatever algorithm the vendor uses. Each
    window is widened by ``margin`` seconds to absorb network jitter between our clock and the
    vendor's (a request sent 1.00 s after another may arrive 0.98 s after it). Memory: one
    timestamp per request in the largest window.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        *,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._windows = [Window(w.limit, w.seconds + margin) for w in windows]
        self._horizon = max((w.seconds for w in self._windows), default=0.0)
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def _wait_needed(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - self._horizon:
            self._sent.popleft()
        wait = self._paused_until - now
        n = len(self._sent)
        for w in self._windows:
            if n >= w.limit:
                # the request that must leave the window before we may send
                oldest = self._sent[n - w.limit]
                wait = max(wait, oldest + w.seconds - now)
        return wait

    def acquire(self) -> None:
        """Block until a request may be sent, then count it as sent."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_needed(now)
                if wait <= 0:
                    self._sent.append(now)
                    return
            self._sleep(wait)

    def penalise(self, seconds: float) -> None:
        """The vendor said 429 anyway: hold every caller sharing this limiter for ``seconds``."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


_SHARED: dict[str, SlidingWindowLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: str, windows: Sequence[Window]) -> SlidingWindowLimiter:
    """One limiter per vendor budget (e.g. per Kontent environment) per process, shared by every
    batch running in that process's threads."""
    full_key = f"{key}|" + ",".join(f"{w.limit}/{w.seconds}" for w in windows)
    with _SHARED_LOCK:
        limiter = _SHARED.get(full_key)
        if limiter is None:
            limiter = _SHARED[full_key] = SlidingWindowLimiter(windows)
        return limiter
