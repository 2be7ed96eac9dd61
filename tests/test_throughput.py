"""Issue 19, throughput and limiter: the limiter's schedule (fake clock), one HTTP client per
vendor budget reused across batches, units sent concurrently with every loader guarantee kept,
and grouped journal lines that never hold an ``intent`` back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from assetferry.connectors.core.errors import QuotaExhausted, TransientError
from assetferry.connectors.core.http import VendorHTTP
from assetferry.connectors.core.ledger import GROUP_LINES, Ledger, entry
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.ratelimit import SlidingWindowLimiter, Window
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from pydantic import SecretStr

from tests import toyvendor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def counts_in_windows(times: list[float], seconds: float) -> int:
    """The most of ``times`` inside any half-open window (t - seconds, t] (how the simulators count)."""
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - seconds:
            j += 1
        most = max(most, i - j + 1)
    return most


# ---- the limiter ----------------------------------------------------------------------------------

def test_limiter_memory_is_bounded_by_the_limit_and_the_rate_is_near_it() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(40, 1.0), Window(2000, 60.0)], min_interval=1 / 40,
                                   clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(5000):
        limiter.release(limiter.acquire())
        sent.append(clock.now)
        # O(1) per acquire: each window keeps at most its limit of slots, however long the run
        assert len(limiter._slots[0]) <= 40 and len(limiter._slots[1]) <= 2000
    assert counts_in_windows(sent, 1.0) <= 40 and counts_in_windows(sent, 60.0) <= 2000
    first_minute = [t for t in sent if t < 50.0]
    share = (len(first_minute) - 1) / (first_minute[-1] - first_minute[0]) / 40
    assert 0.97 <= share <= 1.0  # (1 - epsilon) of the limit, less the margin every 40 sends


class Network:
    """Fake time with requests in flight: each answer comes back ``rtt`` after its send (plus
    ``late`` for chosen requests); the limiter's sleeps let time pass and answers arrive."""

    def __init__(self, rtt: float, late: dict[int, float] | None = None) -> None:
        self.clock = FakeClock()
        self.rtt, self.late = rtt, late or {}
        self.out: list[tuple[float, Any]] = []
        self.sent: list[float] = []
        self.arrivals: list[float] = []
        self.limiter: SlidingWindowLimiter | None = None

    def sleep(self, seconds: float) -> None:
        self.advance_to(self.clock.now + max(0.0, seconds))

    def advance_to(self, t: float) -> None:
        for due, slot in sorted(p for p in self.out if p[0] <= t):
            self.clock.now = max(self.clock.now, due)
            assert self.limiter is not None
            self.limiter.release(slot)
        self.out = [p for p in self.out if p[0] > t]
        self.clock.now = max(self.clock.now, t)

    def run(self, limiter: SlidingWindowLimiter, n: int) -> None:
        self.limiter = limiter
        for i in range(n):
            slot = limiter.acquire()
            now = self.clock.now
            late = self.late.get(i, 0.0)
            self.sent.append(now)
            self.arrivals.append(now + self.rtt / 2 + late)  # the delay before arrival, the worst case
            self.out.append((now + self.rtt + late, slot))


def test_the_rate_does_not_depend_on_the_round_trip_time() -> None:
    """Stamped at send: a 150 ms (or 2 s, longer than the window) round trip costs no rate, and
    the vendor, counting at arrival, never sees more than the limit."""
    for rtt in (0.0, 0.15, 2.0):
        net = Network(rtt)
        net.run(SlidingWindowLimiter([Window(10, 1.0)], min_interval=0.1, clock=net.clock, sleep=net.sleep), 300)
        assert counts_in_windows(net.arrivals, 1.0) <= 10
        tail = net.sent[100:]  # after the first round trips measured the reference
        assert (len(tail) - 1) / (tail[-1] - tail[0]) >= 0.97 * 10, rtt


def test_a_late_request_holds_its_place_by_how_late_it_was_and_no_more() -> None:
    """Requests 20 and 45 are 300 ms late (a stall before they reached the vendor): the vendor
    still never sees more than the limit, and only those two cost rate."""
    late = {20: 0.3, 45: 0.3}
    net = Network(0.15, late)
    net.run(SlidingWindowLimiter([Window(10, 1.0)], min_interval=0.1, clock=net.clock, sleep=net.sleep), 120)
    assert counts_in_windows(net.arrivals, 1.0) <= 10
    on_time = Network(0.15)
    on_time.run(SlidingWindowLimiter([Window(10, 1.0)], min_interval=0.1, clock=on_time.clock,
                                     sleep=on_time.sleep), 120)
    assert counts_in_windows(on_time.arrivals, 1.0) <= 10
    lost = net.sent[-1] - on_time.sent[-1]
    assert 0.3 <= lost <= 2 * 0.3 + 0.05  # each late request delayed the one N later by its lateness


def test_the_request_n_back_still_out_is_waited_for() -> None:
    clock = FakeClock()
    limiter: SlidingWindowLimiter
    held: list[Any] = []
    start = 0.0

    def sleep(seconds: float) -> None:  # the answer comes back 0.5 s after its send: 0.4 s late
        clock.sleep(seconds)
        if held and clock.now >= start + 0.5:
            now, clock.now = clock.now, start + 0.5
            limiter.release(held.pop())
            clock.now = now

    limiter = SlidingWindowLimiter([Window(1, 1.0)], margin=0.0, epsilon=0.0, clock=clock, sleep=sleep)
    for _ in range(3):  # the reference round trip: 100 ms
        slot = limiter.acquire()
        clock.now += 0.1
        limiter.release(slot)
    held.append(limiter.acquire())
    start = held[0].sent  # answered at start + 0.5: 0.4 s late
    limiter.acquire()
    assert clock.now == pytest.approx(start + 1.0 + 0.4)


def test_a_429_pauses_everyone_and_widens_epsilon() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([Window(10, 1.0)], min_interval=0.1, margin=0.0, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        limiter.release(limiter.acquire())
    before = limiter.epsilon
    limiter.penalise(2.0)
    paused_at = clock.now
    limiter.release(limiter.acquire())
    assert clock.now >= paused_at + 2.0
    assert limiter.epsilon >= 2 * before and limiter.penalties == 1
    start, sent = clock.now, []
    for _ in range(50):
        limiter.release(limiter.acquire())
        sent.append(clock.now)
    assert (len(sent) - 1) / (sent[-1] - sent[0]) <= 10 * (1 - limiter.epsilon) + 1e-9 and sent[0] >= start


def test_a_429_heard_while_waiting_sends_the_caller_back_for_a_new_slot() -> None:
    clock = FakeClock()
    limiter: SlidingWindowLimiter

    def sleep(seconds: float) -> None:  # another thread hears a 429 while this one waits
        clock.sleep(seconds)
        if not limiter.penalties:
            limiter.penalise(5.0)

    limiter = SlidingWindowLimiter([Window(1, 1.0)], margin=0.0, clock=clock, sleep=sleep)
    limiter.release(limiter.acquire())
    limiter.acquire()  # reserved t=1, woke up inside the pause: waits it out
    assert clock.now >= 5.0


def test_allowances_raise_quota_without_waiting() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([], allowances=[Window(5, 3600.0)], clock=clock, sleep=clock.sleep)
    for _ in range(5):
        limiter.release(limiter.acquire())
    with pytest.raises(QuotaExhausted):
        limiter.acquire()
    assert clock.now == 0.0
    clock.now = 3601.0
    limiter.acquire()


def test_limiter_threads_get_distinct_slots_in_order() -> None:
    limiter = SlidingWindowLimiter([Window(200, 1.0)], min_interval=1 / 200, margin=0.0)
    got: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            slot = limiter.acquire()
            with lock:
                got.append(slot.sent)
            limiter.release(slot)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 100 and counts_in_windows(got, 1.0) <= 200
    gaps = [b - a for a, b in zip(sorted(got), sorted(got)[1:])]
    assert min(gaps) >= 1 / 200 - 1e-3  # the schedule spaced them, whichever thread asked


# ---- one client per vendor budget -----------------------------------------------------------------

def kontent(transport: httpx.BaseTransport, key: str = "k1") -> Any:
    from assetferry.connectors.vendors.kontent import KontentConnector

    return KontentConnector(url="https://manage.kontent.ai/v2", settings={"environment_id": "00000000-0000-0000-0000-000000000001"},
                            credentials={"api_key": SecretStr(key)}, transport=transport)


def test_batches_share_one_pooled_client_and_closing_a_batch_keeps_it_open() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    first = kontent(transport).session()
    first.close()  # a batch ends
    second = kontent(transport).session()  # the next batch's connector, rebuilt
    assert second.client is first.client and not second.client.is_closed
    assert second.request("GET", "/x").status_code == 200
    other_key = kontent(transport, key="k2").session()
    assert other_key.client is not first.client  # another credential: another pool
    own = VendorHTTP("https://example.invalid", transport=transport)  # no pool_key: owns its client
    own.close()
    assert own.client.is_closed


# ---- overlapped sends -----------------------------------------------------------------------------

class Counting(httpx.BaseTransport):
    """A real HTTP transport that records how many requests were in flight at once."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.now = self.most = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)  # a round trip long enough to see the overlap, whatever the machine
            response = self.inner.handle_request(request)
            response.read()
            return response
        finally:
            with self.lock:
                self.now -= 1


def toy_connector(root: str, transport: httpx.BaseTransport | None = None, **settings: Any) -> toyvendor.ToyConnector:
    return toyvendor.ToyConnector(url=root, settings={"batch": 1, "requests_per_second": 1000, **settings},
                                  credentials={"api_key": SecretStr(toyvendor.TOY_KEY)}, transport=transport)


def frame(n: int, tmp_path: Path, bad: tuple[int, ...] = ()) -> pd.DataFrame:
    raw = pd.DataFrame({"id": [f"R{i:03d}" for i in range(n)],
                        "title": [("bad" if i in bad else "n") + str(i) for i in range(n)]})
    good, _ = canonicalize(RecordChunk(raw, str(tmp_path / "m.csv"), 1), DuplicateTracker(),
                           toyvendor.SPEC.required_columns)
    return good


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in sorted(path.glob("journal/*.jsonl")) for line in p.read_text().splitlines()]


def test_units_overlap_and_every_row_gets_exactly_one_outcome(toy: str, tmp_path: Path) -> None:
    transport = Counting()
    rows = frame(40, tmp_path, bad=(5, 17))
    ledger = Ledger(str(tmp_path / "s"))
    with ledger.writer("run", 0) as journal:
        result = Loader(toy_connector(toy, transport, inflight=4)).load(rows, {}, journal, "run")
    assert transport.most >= 2  # units really were in flight together
    assert transport.most <= 4
    assert result.counts == {"loaded": 38, "rejected": 2}
    assert sorted(o.id for o in result.outcomes) == ["R005", "R017"]
    records = httpx.get(f"{toy}/_sandbox/records").json()["records"]
    assert sorted(r["key"] for r in records) == sorted(f"R{i:03d}" for i in range(40) if i not in (5, 17))
    last = {}
    for line in journal_lines(tmp_path / "s"):
        last[line["id"]] = line["status"]
    assert last == {f"R{i:03d}": "rejected" if i in (5, 17) else "loaded" for i in range(40)}


def test_a_vendor_that_is_down_stops_the_batch_and_nothing_new_is_sent(toy: str, tmp_path: Path) -> None:
    httpx.post(f"{toy}/_sandbox/faults", json={"status": 503, "count": 10_000}).raise_for_status()
    ledger = Ledger(str(tmp_path / "s"))
    c = toy_connector(toy, inflight=4)
    c.policy = type(c.policy)(attempts=1)
    with ledger.writer("run", 0) as journal, pytest.raises(TransientError, match="looks unavailable"):
        # a create that may have reached the vendor is looked up (and resent) before it counts
        Loader(c, recheck_limit=0).load(frame(40, tmp_path), {}, journal, "run")
    stats = httpx.get(f"{toy}/_sandbox/stats").json()
    # the streak (3) stopped it: at most the units already in flight were sent besides
    assert stats["by_route"]["create"] <= 3 + 4 - 1
    intents = [x for x in journal_lines(tmp_path / "s") if x["status"] == "intent"]
    assert len(intents) == stats["by_route"]["create"]  # an intent for every unit sent, none for the rest


def test_a_refused_key_costs_one_request_not_one_per_thread(toy: str, tmp_path: Path) -> None:
    from assetferry.connectors.core.errors import AuthError

    c = toyvendor.ToyConnector(url=toy, settings={"batch": 1, "inflight": 4},
                               credentials={"api_key": SecretStr("wrong-key")})
    with Ledger(str(tmp_path / "s")).writer("run", 0) as journal, pytest.raises(AuthError):
        Loader(c).load(frame(20, tmp_path), {}, journal, "run")
    assert httpx.get(f"{toy}/_sandbox/stats").json()["by_route"] == {"create": 1}


def test_a_quota_stops_new_units_and_leaves_the_rest_pending(toy: str, tmp_path: Path) -> None:
    httpx.post(f"{toy}/_sandbox/limits", json={"daily": 10}).raise_for_status()
    ledger = Ledger(str(tmp_path / "s"))
    with ledger.writer("run", 0) as journal:
        result = Loader(toy_connector(toy, inflight=4)).load(frame(30, tmp_path), {}, journal, "run")
    assert result.counts["loaded"] == 10 and result.counts["pending"] == 20
    assert sum(result.counts.values()) == 30
    creates = httpx.get(f"{toy}/_sandbox/stats").json()["by_route"]["create"]
    assert creates <= 10 + 4  # only the units in flight when the quota answered were sent besides


# ---- the journal ----------------------------------------------------------------------------------

def test_grouped_lines_wait_but_an_intent_is_on_disk_at_once_after_them(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "s"))
    with ledger.writer("run", 0) as journal:
        path = Path(journal.path)
        journal.record(entry("a", "loaded", "run"), sync=False)
        journal.record(entry("b", "loaded", "run"), sync=False)
        assert path.read_text() == ""  # held back (one write per group)
        journal.record(entry("c", "intent", "run"))
        assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]
        for i in range(GROUP_LINES):
            journal.record(entry(f"g{i}", "loaded", "run"), sync=False)
        assert len(path.read_text().splitlines()) == 3 + GROUP_LINES  # a full group is written
        journal.record(entry("z", "loaded", "run"), sync=False)
    assert path.read_text().splitlines()[-1].startswith('{"id":"z"')  # close writes the rest


def test_every_intent_is_on_disk_before_its_send(tmp_path: Path) -> None:
    """With units overlapped, the transport reads the journal file at each create: the intent
    of every row in the request is already there."""
    checked: list[str] = []
    state = tmp_path / "s"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            keys = [item["key"] for item in json.loads(request.content)["items"]]
            on_disk = {x["id"] for x in journal_lines(state) if x["status"] == "intent"}
            assert set(keys) <= on_disk
            checked.extend(keys)
            return httpx.Response(200, json={"ids": [f"v-{k}" for k in keys]})
        return httpx.Response(200, json={"items": []})

    c = toy_connector("http://toy.invalid", httpx.MockTransport(handler), inflight=4)
    with Ledger(str(state)).writer("run", 0) as journal:
        result = Loader(c).load(frame(30, tmp_path), {}, journal, "run")
    assert result.counts == {"loaded": 30} and len(checked) == 30


# ---- staggered batch boundaries ---------------------------------------------------------------------

def test_batch_sizes_stagger_the_first_concurrency_minus_one_batches() -> None:
    from itertools import islice

    from assetferry.connectors.pipeline import batch_sizes

    assert list(islice(batch_sizes(50, 1), 3)) == [50, 50, 50]
    assert list(islice(batch_sizes(50, 2), 3)) == [25, 50, 50]
    assert list(islice(batch_sizes(100, 4), 5)) == [25, 50, 75, 100, 100]
    assert list(islice(batch_sizes(2, 8), 9)) == [1, 1, 1, 1, 1, 1, 1, 2, 2]  # never an empty batch


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_pipeline_batches_are_staggered_and_hold_every_row_once_in_order(tmp_path: Path, chunk_rows: int) -> None:
    """Batches that run together end at different times (a shared budget paces them alike), so
    a boundary never leaves nothing in flight; across source chunks no row is lost or repeated."""
    from assetferry.connectors.core.job import load_job
    from assetferry.connectors.pipeline import Pipeline, make_connector

    from tests import kit

    (tmp_path / "f.txt").write_bytes(b"x")
    rows = [{"id": f"A{i:03d}", "title": f"T{i}", "file": "f.txt", "language": "default"} for i in range(83)]
    kit.write_csv(tmp_path / "m.csv", rows)
    data = kit.job_dict("m.csv", "http://127.0.0.1:9", Path("state"), batch_size=20, concurrency=3)
    job = load_job(kit.write_job(tmp_path / "job.yaml", data))
    pipeline = Pipeline(job, make_connector(job, credentials={}), chunk_rows=chunk_rows)
    batches = [frame for frame, _ in pipeline.batches()]
    assert [len(b) for b in batches] == [6, 13, 20, 20, 20, 4]
    assert [i for b in batches for i in b["id"]] == [r["id"] for r in rows]
