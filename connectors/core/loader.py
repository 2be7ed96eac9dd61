"""The generic loader: one row state machine for every vendor (plain Python, no Prefect).

For one batch it owns: file stat + fingerprint, skipping unchanged rows, forming the vendor's
request units, a durable ``intent`` before every non-idempotent send and the result after it,
reconciling a killed run's ``intent`` rows by lookup (never resending blindly), per-row rejects
(by index where the vendor names them, else by bisecting a splittable unit), the vendor-down
streak, quotas (rows not attempted become ``pending``), and exactly one outcome per row. A
connector only builds requests, classifies answers and looks things up. Independent units of a
batch are sent up to the vendor's ``inflight`` setting at once (a thread pool); every decision
stays in the loader's thread.
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from assetferry.connectors.core.decide import REJECTED, SEND, decide, digest  # noqa: F401  (digest: the ledger's hash, re-exported)
from assetferry.connectors.core.errors import AuthError, QuotaExhausted, RejectedError, TransientError
from assetferry.connectors.core.ledger import INTENT, JournalWriter, LedgerEntry, entry
from assetferry.connectors.vendors.base import Connector, Outcome, Result, Row, Unit

log = logging.getLogger("assetferry.loader")

#: Connection pools (one per vendor, URL, destination and credential: ``http.shared_client``)
#: through which a unit of this process went already: a batch on one of them overlaps its units
#: from the start instead of sending one first.
_WARM: set[int] = set()


def _warm_key(http: Any) -> int:
    return id(getattr(http, "client", http))

STREAK_LIMIT = 3  # consecutive transient unit failures: the vendor looks down
SPLIT_BUDGET = 32  # extra requests spent isolating bad rows in one unit without per-row errors
RECHECK_LIMIT = 3  # lookups + resends of one non-idempotent unit whose send failed (maybe applied)


@dataclass
class BatchResult:
    """What a batch did: counts per outcome, only the outcomes worth reporting (rejected, failed,
    pending; loaded rows are just counted), and why the run must stop, if it must."""

    counts: Counter[str] = field(default_factory=Counter)
    outcomes: list[Outcome] = field(default_factory=list)
    bytes_sent: int = 0
    requests: int = 0
    throttled: int = 0  # 429 answers seen (waited out)
    quota: str | None = None  # the vendor's allowance is spent: stop, the rest is pending
    resets_at: str | None = None
    #: what the connector counted while deciding and sending (``BaseConnector.notes``, e.g. 0-byte
    #: files sent): kind -> rows; the run's summary adds them up
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        self.bytes_sent += outcome.bytes_sent
        if outcome.status not in ("loaded", "unchanged"):
            self.outcomes.append(outcome)

    def merge(self, other: BatchResult) -> None:
        self.counts.update(other.counts)
        self.outcomes += other.outcomes
        self.bytes_sent += other.bytes_sent
        self.requests += other.requests
        self.throttled += other.throttled
        self.quota = self.quota or other.quota
        self.resets_at = self.resets_at or other.resets_at
        self.notes.update(other.notes)


@dataclass(frozen=True)
class PlanItem:
    """One planned unit for a dry run: its rows, the action and the exact requests; or one
    row's decision without a request (``unchanged``, ``reject`` with field and reason)."""

    ids: list[str]
    action: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    where: list[tuple[str | None, int | None]] = field(default_factory=list)
    field: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ids": self.ids, "action": self.action}
        if self.where:
            data["rows"] = [{"source": s, "row": r} for s, r in self.where]
        if self.requests:
            data["requests"] = self.requests
        if self.reason:
            data["field"], data["reason"] = self.field, self.reason
        return data


class Loader:
    """Runs one connector's batches (see the module docstring)."""

    def __init__(self, connector: Connector, *, streak_limit: int = STREAK_LIMIT,
                 split_budget: int = SPLIT_BUDGET, recheck_limit: int = RECHECK_LIMIT,
                 inflight: int | None = None) -> None:
        self.connector = connector
        self.inflight = inflight  # None: the vendor's ``inflight`` setting (1 if it has none)
        self.spec = connector.spec
        self.streak_limit = streak_limit
        self.split_budget = split_budget
        self.recheck_limit = recheck_limit

    # -- deciding -----------------------------------------------------------------------
    def rows(self, frame: pd.DataFrame, priors: dict[str, LedgerEntry],
             run_id: str | None = None) -> tuple[list[Row], list[tuple[int, Outcome]]]:
        """Rows to send, and the rows decided without sending (rejected file, unchanged) with
        their position in ``frame``."""
        # Vectorised (``connectors.core.decide``): one stat per distinct file, hashes in bulk; a
        # dict per row only for the rows sent (the connector's ``send``/``plan`` read ``Row.data``).
        d = decide(self.connector, frame, priors, run_id)
        todo: list[Row] = []
        decided: list[tuple[int, Outcome]] = []
        send = np.flatnonzero(d.status == SEND)
        d.fill_records(frame, send)
        for index in range(len(frame)):
            rid, status, prior = d.ids[index], d.status[index], d.priors[index]
            if status == SEND:
                row = Row(id=rid, data=d.records[index], index=index, info=d.infos[index], prior=prior,
                          hash=d.hash[index], file_hash=d.file_hash[index])
                row.reconcile = bool(d.reconcile[index])
                todo.append(row)
            elif status == REJECTED:
                decided.append((index, Outcome(rid, "rejected", reason=d.reason[index], field=d.field[index])))
            else:  # unchanged, or loaded by an earlier attempt of this very run (a Prefect retry)
                decided.append((index, Outcome(rid, status, vendor_id=prior.vendor_id if prior else None)))
        return todo, decided

    def units(self, rows: list[Row]) -> list[Unit]:
        rule = self.spec.unit
        if rule.kind == "group":
            groups: dict[str, list[Row]] = {}
            for row in rows:
                groups.setdefault(str(row.data.get(rule.column)), []).append(row)
            return [Unit(members, key=key) for key, members in groups.items()]
        if rule.kind == "chunk":
            size = int(getattr(self.connector.settings, rule.size_setting or "", 0) or len(rows) or 1)
            if rule.column:  # chunks never mix two values of the column (e.g. one program each)
                by_value: dict[str, list[Row]] = {}
                for row in rows:
                    by_value.setdefault(str(row.data.get(rule.column)), []).append(row)
                return [Unit(members[i:i + size], key=key) for key, members in by_value.items()
                        for i in range(0, len(members), size)]
            return [Unit(rows[i:i + size]) for i in range(0, len(rows), size)]
        return [Unit([row]) for row in rows]

    def plan(self, frame: pd.DataFrame, priors: dict[str, LedgerEntry]) -> Iterator[PlanItem]:
        """Exactly what ``load`` would do, in source order, sending nothing (needs no credentials)."""
        rows, decided = self.rows(frame, priors)
        where: list[tuple[Any, Any]] = (
            list(zip(frame["_source"].tolist(), frame["_row"].tolist())) if "_source" in frame.columns
            else [(None, None)] * len(frame))
        items: list[tuple[int, PlanItem]] = []
        for index, o in decided:
            action = "reject" if o.status == "rejected" else "unchanged"
            items.append((index, PlanItem([o.id], action, where=[where[index]], field=o.field,
                                          reason=o.reason or None)))
        for unit in self.units(rows):
            plan = self.connector.plan(unit)
            action = plan.action
            if any(r.reconcile for r in unit.rows):
                action = f"reconcile+{action}"  # a lookup first: the vendor may hold it already
            items.append((unit.rows[0].index, PlanItem([r.id for r in unit.rows], action, plan.requests,
                                                       where=[where[r.index] for r in unit.rows])))
        items.sort(key=lambda pair: pair[0])
        for _, item in items:
            yield item

    # -- loading ------------------------------------------------------------------------
    def load(self, frame: pd.DataFrame, priors: dict[str, LedgerEntry], journal: JournalWriter,
             run_id: str) -> BatchResult:
        """Load one batch; every row gets exactly one outcome. Raises AuthError (stop the run)
        and TransientError after ``streak_limit`` consecutive transient unit failures (the batch
        is retried later; rows already journaled are not sent again). A quota is not raised:
        the result says ``quota`` and the rows not attempted are ``pending``."""
        result = BatchResult()
        rows, decided = self.rows(frame, priors, run_id)
        for _, outcome in decided:
            result.add(outcome)
        if not rows:
            return result
        journalist = _Journalist(journal, run_id, group=GROUP_JOURNAL and self.spec.idempotent)
        with self.connector.session() as http:
            try:
                self._reconcile(http, rows, journalist)
                units = self.units(rows)
                for unit in units:
                    unit.run_id = run_id
                self._send_all(http, units, journalist, result)
            finally:
                journal.flush()  # the grouped lines: on disk when the batch ends, whatever happened
                result.requests += http.requests_sent
                result.throttled += http.throttled
        return result

    def _reconcile(self, http: Any, rows: list[Row], journalist: _Journalist) -> None:
        """A killed run left ``intent`` rows: the vendor may have acted. Ask before sending."""
        suspects = [r for r in rows if r.reconcile]
        if not suspects:
            return
        found = self.connector.lookup(http, suspects)
        for row in suspects:
            facts = found.get(row.id)
            if facts and facts.get("vendor_id"):
                prior = row.prior
                row.prior = entry(row.id, "created", journalist.run_id, vendor_id=str(facts["vendor_id"]),
                                  file_ref=prior.file_ref if prior else None,
                                  hash=prior.hash if prior else "", extra=facts.get("extra") or {})
                journalist.record(row.prior)
                log.info("%s: found at the vendor after an interrupted run (%s); not created again",
                         row.id, facts["vendor_id"])
            else:
                row.prior = None  # the vendor never acted: safe to create

    def _recheck(self, http: Any, unit: Unit, journalist: _Journalist) -> bool:
        """A non-idempotent unit failed after it may have reached the vendor: look its rows up
        so that the resend updates what was created instead of creating it twice. False when the
        lookup fails too (the rows keep their ``intent`` for the next attempt)."""
        suspects = [r for r in unit.rows if not r.vendor_id]
        for row in suspects:
            row.reconcile = True
        try:
            self._reconcile(http, suspects, journalist)
        except TransientError as exc:
            log.warning("could not check what the vendor holds after a failed send: %s", exc)
            return False
        return True

    def _width(self) -> int:
        """Units in flight at once: the loader's ``inflight``, else the vendor's setting, else 1."""
        if self.inflight is not None:
            return max(1, self.inflight)
        return max(1, int(getattr(self.connector.settings, "inflight", 1) or 1))

    def _send_all(self, http: Any, units: list[Unit], journalist: _Journalist, result: BatchResult) -> None:
        """Send every unit, up to ``_width()`` at once (independent units from a thread pool; the
        shared limiter paces them all; one at a time until a unit went through this connection
        pool (destination + credential) in this process, and while units fail transiently). Every decision stays in this thread, in the order
        answers arrive: outcomes, journal lines after a send, re-queued parts of a refused unit,
        the streak, the quota. Only ``connector.send`` (and its checkpoints) runs in the
        workers. An ``intent`` is journaled (durably) before its unit is handed to a worker.
        On a fatal error (AuthError, the vendor-down streak) nothing new is sent, the units in
        flight are waited for and settled (their results journaled), then the error is raised."""
        warm = _warm_key(http)
        state = _SendState(deque(units), succeeded=warm in _WARM)
        width = self._width()
        if width == 1 or len(units) == 1:
            while state.queue:
                unit = self._next(state, journalist, result)
                if unit is not None:
                    self._settle(http, state, self._attempt(http, unit, journalist), journalist, result)
            return
        with ThreadPoolExecutor(width, thread_name_prefix=f"{self.spec.name}-send") as pool:
            running: dict[Future[_Attempt], Unit] = {}
            stop: BaseException | None = None
            while running or (state.queue and stop is None):
                # one at a time until a unit succeeds, and again while units fail: a refused key, a
                # vendor that is down or a spent quota costs one request, not ``width``
                allowed = width if state.succeeded and not state.streak else 1
                while stop is None and state.queue and len(running) < allowed:
                    unit = self._next(state, journalist, result)
                    if unit is not None:
                        # the caller's context goes along (a Prefect run's, so the connector's
                        # log lines reach the run's log in the UI); one copy per thread
                        running[pool.submit(contextvars.copy_context().run, self._attempt, http, unit,
                                            journalist)] = unit
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    try:
                        self._settle(http, state, future.result(), journalist, result)
                    except (AuthError, TransientError) as exc:  # fatal for the batch: drain, then raise
                        stop = stop or exc
            if stop is not None:
                raise stop

    def _next(self, state: _SendState, journalist: _Journalist, result: BatchResult) -> Unit | None:
        """The next unit to send, its ``intent`` durable; None when a quota made it ``pending``."""
        unit = state.queue.popleft()
        if result.quota:
            for row in unit.rows:
                result.add(Outcome(row.id, "pending", reason=result.quota))
            return None
        if not self.spec.idempotent:
            for row in unit.rows:
                if not row.vendor_id:
                    journalist.record(entry(row.id, INTENT, journalist.run_id, hash=row.hash,
                                            file_hash=row.file_hash))
        return unit

    def _attempt(self, http: Any, unit: Unit, journalist: _Journalist) -> _Attempt:
        """Send one unit (in a worker thread): its results, or the exception it raised."""
        try:
            return _Attempt(unit, self.connector.send(http, unit, journalist.checkpoint), None)
        except Exception as exc:  # noqa: BLE001 - settled by the loader's thread (``_settle``)
            return _Attempt(unit, None, exc)

    def _settle(self, http: Any, state: _SendState, attempt: _Attempt, journalist: _Journalist,
                result: BatchResult) -> None:
        """One unit's answer -> outcomes, journal lines, re-queued units. Raises AuthError, and
        TransientError once ``streak_limit`` units in a row failed transiently."""
        unit, exc = attempt.unit, attempt.error
        if exc is None:
            state.streak = 0
            state.succeeded = True
            _WARM.add(_warm_key(http))
            self._done(unit, attempt.results or [], journalist, result)
        elif isinstance(exc, RejectedError):
            state.streak = 0
            self._rejected(unit, exc, state.queue, state.budget, journalist, result)
        elif isinstance(exc, QuotaExhausted):
            result.quota = str(exc)
            result.resets_at = exc.resets_at
            log.warning("quota: %s%s", exc, f" (resets {exc.resets_at})" if exc.resets_at else "")
            state.queue.appendleft(unit)
        elif isinstance(exc, AuthError):
            _WARM.discard(_warm_key(http))
            raise exc
        elif isinstance(exc, TransientError):
            if (not self.spec.idempotent and unit.rechecks < self.recheck_limit
                    and self._recheck(http, unit, journalist)):
                # A blip can hit the resend too: look up and resend a few times, never blindly.
                state.queue.appendleft(Unit(unit.rows, key=unit.key, depth=unit.depth, origin=unit.origin,
                                            run_id=unit.run_id, rechecks=unit.rechecks + 1))
                return
            state.streak = state.streak if exc.local else state.streak + 1  # our side's failure: the vendor is fine
            for row in unit.rows:
                result.add(Outcome(row.id, "failed", reason=str(exc)))
            if state.streak >= self.streak_limit:
                raise TransientError(f"{self.spec.name} looks unavailable: {exc}") from None
        else:
            # Building or streaming THIS request failed in a way nobody classified (a codec, a
            # reader, a connector bug): its rows fail with their own reason; the rest go on.
            # A non-idempotent unit keeps its ``intent``: the next run asks before resending.
            reason = f"{type(exc).__name__}: {http.redact(str(exc))[:300]}"
            log.warning("%s: %s", ", ".join(r.id for r in unit.rows), reason)
            for row in unit.rows:
                result.add(Outcome(row.id, "failed", reason=reason))

    def _done(self, unit: Unit, results: list[Result], journalist: _Journalist, result: BatchResult) -> None:
        by_id = {r.id: r for r in results}
        for row in unit.rows:
            res = by_id.get(row.id)
            if res is None:
                result.add(Outcome(row.id, "failed", reason=f"{self.spec.name} did not answer for this row"))
                continue
            if res.status == "rejected":
                self._reject_row(row, res.field, res.reason, journalist, result)
                continue
            journalist.record(entry(row.id, res.status, journalist.run_id, hash=row.hash, file_hash=row.file_hash,
                                    vendor_id=res.vendor_id or row.vendor_id, file_ref=res.file_ref,
                                    extra=res.extra))
            result.add(Outcome(row.id, "loaded", vendor_id=res.vendor_id, bytes_sent=res.bytes_sent))

    def _reject_row(self, row: Row, field_name: str | None, reason: str, journalist: _Journalist,
                    result: BatchResult) -> None:
        if not self.spec.idempotent and not row.vendor_id:
            # the intent is settled: the vendor refused, nothing was created
            journalist.record(entry(row.id, "rejected", journalist.run_id, hash=row.hash))
        result.add(Outcome(row.id, "rejected", reason=reason, field=field_name))

    def _rejected(self, unit: Unit, exc: RejectedError, queue: deque[Unit], budget: dict[int, int],
                  journalist: _Journalist, result: BatchResult) -> None:
        """A refused unit: reject the rows the vendor named and resend the rest; without names,
        bisect a splittable unit (within ``split_budget`` extra requests) or reject the unit."""
        rows = unit.rows
        origin = unit.origin if unit.origin is not None else id(unit)
        named = {i: v for i, v in exc.rows.items() if 0 <= i < len(rows)}
        if named:
            for i in sorted(named):
                field_name, reason = named[i]
                self._reject_row(rows[i], field_name or exc.field, reason, journalist, result)
            rest = [r for i, r in enumerate(rows) if i not in named]
            if rest:
                queue.appendleft(Unit(rest, key=unit.key, depth=unit.depth + 1, origin=origin, run_id=unit.run_id))
            return
        splittable = self.spec.unit.kind == "chunk" and len(rows) > 1
        if not splittable:
            for row in rows:
                self._reject_row(row, exc.field, exc.reason, journalist, result)
            return
        spent = budget.get(origin, 0)
        if spent + 2 > self.split_budget:
            for row in rows:  # never reject rows blindly: the next run tries again
                result.add(Outcome(row.id, "failed", reason=f"in a request refused without row detail "
                                                              f"({exc.reason}); split budget spent"))
            return
        budget[origin] = spent + 2
        half = len(rows) // 2
        for part in (rows[half:], rows[:half]):
            queue.appendleft(Unit(part, key=unit.key, depth=unit.depth + 1, origin=origin, run_id=unit.run_id))
        log.info("%s refused %d rows without naming them; splitting to find the bad ones",
                 self.spec.name, len(rows))


@dataclass
class _SendState:
    """The send loop's state, touched only by the loader's thread."""

    queue: deque[Unit]
    streak: int = 0  # transient unit failures in a row (in the order answers arrived)
    succeeded: bool = False  # a unit went through: units may overlap from now on
    budget: dict[int, int] = field(default_factory=dict)  # split requests spent per origin unit


@dataclass
class _Attempt:
    unit: Unit
    results: list[Result] | None
    error: Exception | None


#: Group the journal lines of idempotent vendors (see ``_Journalist``).
GROUP_JOURNAL = False


class _Journalist:
    """Journals steps for the loader and the connector (``checkpoint``, from worker threads).

    Durability: an ``intent`` is always written and flushed before ``record`` returns (it
    precedes a non-idempotent send), and so is every other line unless ``group`` (an
    idempotent vendor and ``GROUP_JOURNAL``): then lines are grouped
    (``JournalWriter.record(sync=False)``) and a kill loses at most the last group, whose rows
    are sent again. Off by default: a flushed line costs about 14 µs (0.8 % of a profiled load),
    while a lost group re-sends up to a second of work after a kill (re-uploading files)."""

    def __init__(self, journal: JournalWriter, run_id: str, *, group: bool = False) -> None:
        self.journal = journal
        self.run_id = run_id
        self.group = group

    def record(self, item: LedgerEntry) -> None:
        self.journal.record(item, sync=not self.group or item.status == INTENT)

    def checkpoint(self, row: Row, status: str, fields: dict[str, Any]) -> None:
        known = {"vendor_id", "file_ref", "extra"}
        extra = {k: v for k, v in fields.items() if k not in known}
        item = entry(row.id, status, self.run_id, hash=row.hash, file_hash=row.file_hash, vendor_id=fields.get("vendor_id") or row.vendor_id,
                     file_ref=fields.get("file_ref"), extra={**(fields.get("extra") or {}), **extra})
        self.record(item)
        row.prior = item
