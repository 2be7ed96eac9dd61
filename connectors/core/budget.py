"""A vendor's rate budget shared by every process and machine: blocks leased from a global limit,
spent through the local limiter.

Why blocks: asking a global limit (a Prefect global concurrency limit used as a rate limit) once
per request costs ~10 ms a call and reaches only 40-80 % of a 10/s limit (denied callers come back
after a jittered wait). So each process leases ``block`` requests at once and spends them through
its local limiter (``ratelimit.SlidingWindowLimiter``, unchanged: it still paces this process and
counts its in-flight requests).

Why it stays under the vendor's limit, whatever the number of processes. The global limit is a
bucket of capacity ``block`` draining at ``rate`` slots/s: a block is granted only when the bucket
is empty, so grants are at least ``block / rate`` seconds apart (the server's decay is rounded
down, which only spaces them further). A leased request must be sent within ``ttl`` seconds of its
grant, else it is dropped. The vendor counts a request when it arrives, up to ``jitter`` seconds
after the send varies. So the requests it counts in any window of ``W`` seconds were granted in
an interval of ``W' = W + ttl + jitter``: at most ``floor(W' * rate / block) + 1`` blocks. With
``rate < m * block / W'`` (``m = floor(limit / block)``) that is at most ``m`` blocks, at most
``limit`` requests, for every paced window of the vendor (``Window``). ``plan`` picks the rate.

Plain Python, no Prefect: the global limit is reached through a ``Lease`` callable installed by
the Prefect side (``tasks/load.py``), so a test can drive it with a fake.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from assetferry.connectors.core.errors import TransientError
from assetferry.connectors.core.ratelimit import Limiter, Window

#: Blocks until ``n`` slots of the named global limit are granted; raises on failure (a timeout,
#: the server unreachable). Installed by the orchestrator side.
Lease = Callable[[str, int], None]

TTL = 0.25  # seconds a leased request may wait for the local limiter before it is dropped
JITTER = 0.1  # seconds the vendor's arrival time may vary around our send time
SAFETY = 0.98  # the rate is kept this far below the bound


@dataclass(frozen=True)
class BudgetPlan:
    """The global limit for one vendor budget: ``name`` (``assetferry:<vendor>:<budget key>``),
    ``block`` (its capacity, leased at once), ``rate`` (its slot decay per second), ``ttl``."""

    name: str
    block: int
    rate: float
    ttl: float


def limit_name(vendor: str, key: str) -> str:
    """``assetferry:<vendor>:<budget key>``, without the characters Prefect refuses in names."""
    return re.sub(r"[/%&<>\s]+", "_", f"assetferry:{vendor}:{key}")[:200]


def plan(name: str, windows: Sequence[Window], *, min_interval: float = 0.0) -> BudgetPlan | None:
    """The global limit that keeps every paced window (``limit`` per ``seconds``) under its limit
    across all processes (see the module docstring); None when there is no paced window. The
    block is a fifth of the smallest window's limit (at least 1): small enough that a process
    sends it within ``ttl`` at the vendor's pace, large enough to cut the global calls by that."""
    windows = [w for w in windows if w.limit >= 1]
    if not windows:
        return None
    block = max(1, min(w.limit for w in windows) // 5)
    ttl = TTL + (block - 1) * min_interval  # the local limiter spaces a block's sends
    rate = min((w.limit // block) * block / (w.seconds + ttl + JITTER) for w in windows)
    return BudgetPlan(name=name, block=block, rate=round(rate * SAFETY, 4), ttl=ttl)


class SharedBudget:
    """A ``Limiter`` that first takes the local limiter's slot, then one request of a leased
    block (leasing ``block`` more from the global limit when none is left or the lease expired).
    ``release`` and ``penalise`` go to the local limiter. Thread-safe; one per budget per process
    (``shared_budget``) so every batch of a process draws on the same lease."""

    def __init__(self, inner: Limiter, budget: BudgetPlan, lease: Lease, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self.budget, self._lease, self._clock = inner, budget, lease, clock
        self._left = 0
        self._granted = -math.inf
        self._lock = threading.Lock()
        self.leases = 0  # global calls made (for tests and the benchmark)
        self.dropped = 0  # leased requests that expired unsent

    def acquire(self) -> Any:
        """Block until the local limiter and the global budget both allow one request. Raises
        QuotaExhausted (from the local limiter's allowances) or TransientError (the global limit
        could not be reached)."""
        token = self.inner.acquire()
        try:
            with self._lock:  # one lease at a time per process; others wait for its block
                if self._left and self._clock() - self._granted > self.budget.ttl:
                    self.dropped += self._left
                    self._left = 0
                if not self._left:
                    try:
                        self._lease(self.budget.name, self.budget.block)
                    except TransientError:
                        raise
                    except Exception as exc:
                        raise TransientError(f"the shared rate budget {self.budget.name} could not be "
                                             f"leased: {type(exc).__name__}: {exc}") from exc
                    self._granted = self._clock()
                    self._left = self.budget.block
                    self.leases += 1
                self._left -= 1
        except BaseException:
            self.inner.release(token)
            raise
        return token

    def release(self, token: Any) -> None:
        self.inner.release(token)

    def penalise(self, seconds: float) -> None:
        self.inner.penalise(seconds)


_SHARED: dict[tuple[str, int], SharedBudget] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class Budgets:
    """What a connector needs to share its budget: the ``Lease`` of the orchestrator.
    ``wrap`` is called where the local limiter is built (``BaseConnector.session``)."""

    lease: Lease

    def wrap(self, limiter: Limiter, vendor: str, key: str, windows: Sequence[Window], *,
             min_interval: float = 0.0) -> Limiter:
        """``limiter`` behind the shared budget of ``vendor``/``key`` (the same object for every
        call of this process with the same local limiter), or ``limiter`` itself when there is
        no paced window to share."""
        budget = plan(limit_name(vendor, key), windows, min_interval=min_interval)
        if budget is None:
            return limiter
        with _SHARED_LOCK:
            shared = _SHARED.get((budget.name, id(limiter)))
            if shared is None or shared.inner is not limiter or shared.budget != budget:
                shared = _SHARED[(budget.name, id(limiter))] = SharedBudget(limiter, budget, self.lease)
            return shared
