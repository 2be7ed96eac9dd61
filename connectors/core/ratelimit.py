"""Client-side rate limiting sized from a vendor's documented limits (no 429 on a healthy run)."""

from __future__ import annotations

import threading
import time
from collections import deque
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
    """One request's token: ``sent`` is its slot on the schedule (the send stamp; the caller
    woke up at or just after it), ``t`` when its response came back (``inf`` while in flight)."""

    __slots__ = ("sent", "t")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.t = INF


INF = float("inf")
#: Round trips per block for the reference (fastest) round-trip time: the reference is the
#: minimum over the current and the previous block, so it follows a link that got slower.
RTT_BLOCK = 64
MARGIN = 0.005  # seconds added to every window: timer and clock granularity
EPSILON = 0.01  # default headroom: pace at 99 % of every limit
MAX_EPSILON = 0.25  # headroom after repeated 429s


class SlidingWindowLimiter:
    """Thread-safe pacing on an absolute schedule under one or more sliding windows.

    Design (issue 19). A sliding log of N per W never exceeds what a fixed window, a sliding
    window or a token bucket of the same N and W allow, so it is safe whatever algorithm the
    vendor uses. Vendors count a request when it *arrives*; we know when we sent it and when its
    answer came back, and it arrived in between. A constant network delay shifts every request
    alike and costs nothing; only a request that was *late* can look closer to a later one to
    the vendor than to us. So each request is stamped at its send and counts in a window until
    ``sent + W + excess``, where ``excess`` is how much longer its round trip took than the
    fastest recent one (``RTT_BLOCK``): the most it can have been delayed before it arrived. A
    late request (a stall, a queue at the vendor, a slow upload) thus holds its own place a
    little longer, and nothing else pays for it: the rate no longer depends on the round-trip
    time (the old design counted every request until W after its response: 0.83 of a 1 s limit
    at 150 ms RTT). The request N back is normally answered long before the next may go; when
    its answer is still out, the next waits for it, unless the round trip is longer than the
    window itself, where waiting would cap the rate: then a request not late so far is assumed
    on time.

    Every window is paced at ``(1 - epsilon)`` of its limit plus ``margin`` seconds (clock and
    timer granularity), and ``min_interval`` spaces sends evenly on an *absolute* schedule (slot
    k+1 at slot k + interval, not "interval after the previous caller woke up", so timer
    overshoot does not turn into lost rate); a vendor that enforces a per-second limit as a token
    bucket with a small burst sees no burst either. A 429 (``penalise``) holds every caller and
    doubles epsilon (up to ``MAX_EPSILON``): a vendor that throttled us once is paced further
    below its limit for the rest of the process.

    Cost: ``acquire`` is O(windows) amortised: per window a deque of the last N slots
    (reservations are handed out in time order, so the one that must leave is always at the
    left), and the reference round trip is a running minimum. Memory: N slots per window, plus
    the allowances' stamps.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        *,
        allowances: Sequence[Window] = (),
        min_interval: float = 0.0,
        margin: float = MARGIN,
        epsilon: float = EPSILON,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._windows = [w for w in windows if w.limit >= 1]
        self._slots: list[deque[Slot]] = [deque() for _ in self._windows]
        # Allowances (hour/day budgets) are never waited for: when one is spent, acquire()
        # raises QuotaExhausted so the run stops cleanly and the rest stays pending.
        self._allowances = list(allowances)
        self._spent: list[deque[float]] = [deque() for _ in self._allowances]
        self._min_interval = min_interval
        self._epsilon = epsilon
        self._margin = margin
        # the reference round trip: min over the current block and the previous one (0 until
        # one is measured: every request then counts until W after its answer, the safe start)
        self._rtt_cur, self._rtt_prev, self._rtt_n = INF, INF, 0
        self._paused_until = 0.0
        self._next_slot = -INF  # the absolute schedule: earliest start of the next slot
        self._last_slot = -INF
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self.penalties = 0

    # -- introspection (benchmarks, tests) ------------------------------------------------
    @property
    def epsilon(self) -> float:
        return self._epsilon

    @property
    def reference_rtt(self) -> float:
        ref = min(self._rtt_cur, self._rtt_prev)
        return 0.0 if ref == INF else ref

    # -- the schedule ------------------------------------------------------------------
    def _earliest(self, now: float) -> tuple[float, bool]:
        """(the earliest time the next request may go, whether that is final). Not final: the
        request that must leave a window first is still out; look again then. Holds the lock."""
        at = max(now, self._paused_until, self._next_slot, self._last_slot)
        final = True
        stretch = 1.0 / (1.0 - self._epsilon)
        ref = self.reference_rtt
        for w, slots in zip(self._windows, self._slots):
            if len(slots) < w.limit:
                continue
            oldest = slots[0]  # the request N back: it must leave the window before we may send
            span = w.seconds * stretch + self._margin
            late = (oldest.t if oldest.t != INF else now) - oldest.sent - ref
            if oldest.t != INF or late >= span:
                # answered: it counts until W after its send plus how late it was, at most one
                # window more (still out after a whole window: a long upload or a slow answer,
                # which reached the vendor when it started; a caller that never releases cannot
                # block the limiter either)
                at = max(at, oldest.sent + span + min(span, max(0.0, late)))
            elif ref + self._margin < span:
                # still out, and normally back before it leaves the window: wait for its answer
                # (if it is late, it leaves no earlier than now + span - ref)
                at = max(at, oldest.sent + span, now + span - ref)
                final = False
            else:  # a round trip longer than the window: assume on time unless late already
                at = max(at, oldest.sent + span + max(0.0, late))
        return at, final

    def _reserve(self, at: float) -> Slot:
        slot = Slot(at)
        for w, slots in zip(self._windows, self._slots):
            slots.append(slot)
            while len(slots) > w.limit:
                slots.popleft()  # only the last N can ever bind
        if self._min_interval:
            # absolute: the next slot follows this one, not the moment a thread woke up; after
            # an idle spell it restarts from now (``_earliest`` takes the later of the two)
            self._next_slot = at + self._min_interval / (1.0 - self._epsilon)
        self._last_slot = at
        for spent in self._spent:
            spent.append(at)
        return slot

    def _check_allowances(self, now: float) -> None:
        for w, spent in zip(self._allowances, self._spent):
            while spent and spent[0] <= now - w.seconds:
                spent.popleft()
            if len(spent) >= w.limit:
                from datetime import datetime, timedelta, timezone

                from assetferry.connectors.core.errors import QuotaExhausted

                resets = datetime.now(timezone.utc) + timedelta(seconds=spent[0] + w.seconds - now)
                raise QuotaExhausted(
                    f"the allowance of {w.limit} requests per {w.seconds:g} s is spent",
                    resets_at=resets.isoformat(timespec="seconds"))

    def acquire(self) -> Slot:
        """Block until a request may be sent; the caller must ``release`` the slot when the
        response (or the error) is back. Raises QuotaExhausted when an allowance is spent.

        The slot is reserved under the lock (concurrent callers get successive slots of the
        schedule) and waited for outside it. A 429 heard while waiting (``penalise``) sends
        the caller back for a new slot after the pause; its old reservation stays in the log,
        which only makes the pacing more careful."""
        while True:
            with self._lock:
                now = self._clock()
                self._check_allowances(now)
                at, final = self._earliest(now)
                slot = self._reserve(at) if final else None
                paused = self._paused_until
            if at > now:
                self._sleep(at - now)
            if slot is None:
                continue
            with self._lock:
                if self._paused_until <= paused or self._paused_until <= at:
                    return slot
                for spent in self._spent:  # not sent: give the allowance back
                    if spent:
                        spent.pop()

    def release(self, slot: Slot) -> None:
        """The response (or error) is back: the slot's round trip is known (``sent`` is its
        slot on the schedule, so a caller that woke up late counts as a late request)."""
        with self._lock:
            slot.t = now = self._clock()
            rtt = now - slot.sent
            self._rtt_cur = min(self._rtt_cur, max(0.0, rtt))
            self._rtt_n += 1
            if self._rtt_n >= RTT_BLOCK:
                self._rtt_prev, self._rtt_cur, self._rtt_n = self._rtt_cur, INF, 0

    def penalise(self, seconds: float) -> None:
        """The vendor said 429 anyway: hold every caller sharing this limiter for ``seconds`` and
        pace further below the limit from now on (epsilon doubles, up to ``MAX_EPSILON``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._epsilon = min(MAX_EPSILON, max(2 * self._epsilon, 0.02))
            self.penalties += 1


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
