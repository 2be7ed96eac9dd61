"""Client-side rate limiting sized from a vendor's documented limits (no 429 on a healthy run)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Window:
    """At most ``limit`` requests in any ``seconds``-long window."""

    limit: int
    seconds: float


class Limiter(Protocol):
    """The seam: a local limiter now; a Prefect global-concurrency-limit lease later."""

    def acquire(self) -> Any:
        """Block until one request may be sent; returns a token for ``release``."""

    def release(self, token: Any) -> None:
        """The request's response (or error) is back."""

    def penalise(self, seconds: float) -> None:
        """The vendor throttled us anyway: hold every caller for ``seconds``."""


class Slot:
    """One request's place in the window: in flight (``inf``) until released, then the time its
    response arrived, the latest moment the vendor can have counted it."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = math.inf


class SlidingWindowLimiter:
    """Thread-safe sliding-window log over zero or more windows (zero: only 429 pauses apply).

    A sliding log of N per W never exceeds what a fixed window, a sliding window or a token
    bucket of the same N and W allow, so it is safe whatever algorithm the vendor uses. A request
    counts from the moment it is sent until ``W`` after its response came back: the vendor saw it
    somewhere in between, so no network or CPU jitter can make two of ours look closer together
    to the vendor than to us. Each window is also widened by ``margin`` seconds for clock skew.
    ``min_interval`` also spaces sends evenly (e.g. 0.1 s for 10/s), so a vendor that enforces its
    per-second limit as a token bucket with a small burst sees no burst either.
    Memory: one slot per request in the largest window.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        *,
        allowances: Sequence[Window] = (),
        min_interval: float = 0.0,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._windows = [Window(w.limit, w.seconds + margin) for w in windows]
        # Allowances (hour/day budgets) are never waited for: when one is spent, acquire()
        # raises QuotaExhausted so the run stops cleanly and the rest stays pending.
        self._allowances = list(allowances)
        self._sent: list[float] = []  # send times, for the allowances
        self._horizon = max((w.seconds for w in self._windows), default=0.0)
        self._slots: list[Slot] = []
        self._paused_until = 0.0
        self._min_interval = min_interval
        self._last_send = -math.inf
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def _wait_needed(self, now: float) -> float:
        self._slots = [s for s in self._slots if s.t > now - self._horizon]
        wait = max(self._paused_until, self._last_send + self._min_interval) - now
        times = sorted(s.t for s in self._slots)
        n = len(times)
        for w in self._windows:
            if n >= w.limit:
                # the request that must leave the window before we may send
                oldest = times[n - w.limit]
                wait = max(wait, 0.01 if oldest == math.inf else oldest + w.seconds - now)
        return wait

    def _check_allowances(self, now: float) -> None:
        if not self._allowances:
            return
        longest = max(w.seconds for w in self._allowances)
        self._sent = [t for t in self._sent if t > now - longest]
        for w in self._allowances:
            inside = [t for t in self._sent if t > now - w.seconds]
            if len(inside) >= w.limit:
                from datetime import datetime, timedelta, timezone

                from assetferry.connectors.core.errors import QuotaExhausted

                resets = datetime.now(timezone.utc) + timedelta(seconds=inside[0] + w.seconds - now)
                raise QuotaExhausted(
                    f"the allowance of {w.limit} requests per {w.seconds:g} s is spent",
                    resets_at=resets.isoformat(timespec="seconds"))

    def acquire(self) -> Slot:
        """Block until a request may be sent; the caller must ``release`` the slot when the
        response (or the error) is back. Raises QuotaExhausted when an allowance is spent."""
        while True:
            with self._lock:
                now = self._clock()
                self._check_allowances(now)
                wait = self._wait_needed(now)
                if wait <= 0:
                    self._last_send = now
                    if self._allowances:
                        self._sent.append(now)
                    slot = Slot()
                    self._slots.append(slot)
                    return slot
            self._sleep(wait)

    def release(self, slot: Slot) -> None:
        with self._lock:
            slot.t = self._clock()

    def penalise(self, seconds: float) -> None:
        """The vendor said 429 anyway: hold every caller sharing this limiter for ``seconds``."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


_SHARED: dict[str, SlidingWindowLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: str, windows: Sequence[Window], *, allowances: Sequence[Window] = (),
                   min_interval: float = 0.0) -> SlidingWindowLimiter:
    """One limiter per vendor budget (e.g. per Kontent environment) per process, shared by every
    batch running in that process's threads."""
    full_key = (f"{key}|{min_interval}|" + ",".join(f"{w.limit}/{w.seconds}" for w in windows)
                + "|" + ",".join(f"{w.limit}/{w.seconds}" for w in allowances))
    with _SHARED_LOCK:
        limiter = _SHARED.get(full_key)
        if limiter is None:
            limiter = _SHARED[full_key] = SlidingWindowLimiter(windows, allowances=allowances,
                                                               min_interval=min_interval)
        return limiter
