"""Unit-level tests of the Wordbee connector against its simulator (no Prefect): the error
classifier, the 429 backoff reaching the limiter, the shared session token, streamed uploads,
lookup and the settings checks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr

from assetferry.connectors.core.errors import AuthError, ConfigError, QuotaExhausted
from assetferry.connectors.core.http import Action, RetryPolicy, TokenAuth, VendorHTTP, shared_auth
from assetferry.connectors.core.ledger import JournalWriter, Ledger
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from assetferry.connectors.vendors.wordbee import WordbeeConnector
from assetferry.sandbox import wordbee as sim
from assetferry.sandbox.server import running
from tests.kits import wordbee as wb

THROTTLE = {"error": {"type": "Throttling error", "message": "Requests throttled. Maximum allowed 1000 per 01:00:00."},
            "reason": "Requests throttled. Maximum allowed 1000 per 01:00:00."}


def connector(root: str = "http://wordbee.invalid", key: str = wb.KEY, **settings: Any) -> WordbeeConnector:
    return WordbeeConnector(url=f"{root}/api", settings={"project_id": wb.PROJECT, **settings},
                            credentials={"account_id": SecretStr(wb.ACCOUNT), "api_key": SecretStr(key)})


def error(status: int, title: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"operation": None, "title": title, "details": None, "messages": []},
                                        "reason": title}, headers=headers)


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with running(sim.create_app()) as url:
        yield url


@pytest.fixture
def fresh(root: str) -> str:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()
    return root


def test_classifier_reads_the_body() -> None:
    c = connector()
    expired = httpx.Response(400, json={
        "error": {"title": "Token invalid or expired.", "messages": [{"title": "Not authenticated"}]},
        "reason": "Not authenticated - API construct session from token failed with error: Not authenticated"})
    assert c.classify(expired).action is Action.REAUTH  # a 400, not a 401
    scope = c.classify(error(400, "Invalid parameter 'scope': The project 7214 does not exist."))
    assert scope.action is Action.AUTH and "project 7214" in scope.message  # configuration: stop
    segment = c.classify(error(400, "Invalid parameter 'segmentid': The segment 9 does not exist."))
    assert (segment.action, segment.field) == (Action.REJECT, "parent") and "segment 9" in segment.message
    assert c.classify(error(400, "The file is too large.")).action is Action.REJECT
    assert c.classify(httpx.Response(200, json={})) is None and c.classify(httpx.Response(503)) is None


def test_hourly_429_waits_10_20_40_then_is_a_quota_and_a_success_resets_the_count() -> None:
    assert RetryPolicy().default_retry_after == 10.0  # the core's default for a 429 without Retry-After
    c = connector()
    throttled = httpx.Response(429, json=THROTTLE)
    waits = [c.classify(throttled) for _ in range(3)]
    assert [(v.action, v.retry_after) for v in waits] == [(Action.RETRY, 10), (Action.RETRY, 20), (Action.RETRY, 40)]
    quota = c.classify(throttled)
    assert quota.action is Action.QUOTA and "01:00:00" in quota.message and quota.resets_at
    c.classify(httpx.Response(200, json={}))
    assert c.classify(throttled).retry_after == 10  # counting starts again
    assert connector(throttle_retries=0).classify(throttled).action is Action.QUOTA
    hinted = connector().classify(httpx.Response(429, json=THROTTLE, headers={"Retry-After": "3"}))
    assert (hinted.action, hinted.retry_after) == (Action.RETRY, 3.0)  # a Retry-After header is honoured
    per_second = httpx.Response(429, json={"error": {"type": "Throttling error",
                                                     "message": "Requests throttled. Maximum allowed 5 per 00:00:01."}})
    c = connector()
    assert {c.classify(per_second).action for _ in range(6)} == {Action.RETRY}  # never the hourly allowance


class RecordingLimiter:
    """Sends at once; records the pauses a 429 asks for instead of sleeping them."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def acquire(self) -> None:
        return None

    def release(self, token: Any) -> None:
        return None

    def penalise(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_vendor_429s_back_off_through_the_limiter_then_stop_as_a_quota(fresh: str) -> None:
    httpx.post(f"{fresh}/_sandbox/limits", json={"per_hour": 1}).raise_for_status()
    c = connector(fresh)
    limiter = RecordingLimiter()
    http = VendorHTTP(c.base_url, auth=c.auth(), limiter=limiter, classify=c.classify, error_parser=c.error_message)
    with http:
        assert http.request("GET", f"/resources/assets/{wb.SEGMENTS[0]}/list", params={"scope": c.scope}).json() == []
        with pytest.raises(QuotaExhausted) as info:
            http.request("GET", f"/resources/assets/{wb.SEGMENTS[0]}/list", params={"scope": c.scope})
        c.finish(http, "run")
    assert limiter.pauses == [10, 20, 40]
    assert "Maximum allowed 1 per 01:00:00" in str(info.value) and info.value.resets_at
    s = httpx.get(f"{fresh}/_sandbox/stats").json()
    assert (s["throttled"], s["by_route"]["logout"], s["sessions"]) == (4, 1, 0)


def test_one_session_token_per_credential_per_process_and_a_bad_key_is_refused(fresh: str) -> None:
    a, b = connector(fresh), connector(fresh)
    assert a.auth() is b.auth()  # batches rebuild the connector; the token is shared
    assert connector(fresh, key="another-key").auth() is not a.auth()
    with pytest.raises(AuthError) as info, connector(fresh, key="wrong-key-123").session() as http:
        http.request("GET", f"/resources/assets/{wb.SEGMENTS[0]}/list", params={"scope": "pr7214"})
    assert "refused" in str(info.value) and "Invalid private key." in str(info.value)
    assert "wrong-key-123" not in str(info.value)


def test_threads_that_hear_expired_at_once_fetch_one_new_token() -> None:
    issued: list[str] = []

    def fetch(client: httpx.Client) -> dict[str, str]:
        issued.append(f"token-{len(issued)}")
        return {"X-Token": issued[-1]}

    auth = shared_auth("test|threads", lambda: TokenAuth(fetch))
    assert isinstance(auth, TokenAuth)
    client = httpx.Client()
    auth.ensure(client)
    seen = threading.Barrier(2)

    def batch() -> None:  # sends with token-0, hears "expired", refreshes
        next(auth.auth_flow(httpx.Request("GET", "http://x/")))
        seen.wait()
        with lock:
            auth.refresh(client)

    lock = threading.Lock()
    threads = [threading.Thread(target=batch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert issued == ["token-0", "token-1"]  # not one new token per thread
    assert set(auth.secrets()) == {"token-0", "token-1"}


class Tracking:
    """A file object that records how much each read asked for."""

    def __init__(self, path: Path, reads: list[int]) -> None:
        self._f = path.open("rb")
        self._reads = reads

    def read(self, size: int = -1) -> bytes:
        self._reads.append(size)
        return self._f.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _prepared(c: WordbeeConnector, rows: list[dict[str, Any]], source: str) -> pd.DataFrame:
    good, _ = canonicalize(RecordChunk(pd.DataFrame(rows), source, 1), DuplicateTracker(), ("id", "file", "parent"))
    ready, rejects = c.prepare(good)
    assert rejects.empty
    return ready


def test_the_upload_is_streamed_and_lookup_finds_the_asset(fresh: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024))
    c = connector(fresh)
    reads: list[int] = []
    c.files.opener = lambda url: (lambda: Tracking(Path(url), reads))  # type: ignore[method-assign]
    rows = [{"id": "BIG", "file": str(big), "parent": wb.SEGMENTS[1], "language": "de", "relative_path": "raw"}]
    ready = _prepared(c, rows, str(tmp_path / "m.csv"))
    ledger = Ledger(str(tmp_path / "state"))
    with ledger.writer("run-1", 0) as journal:
        assert isinstance(journal, JournalWriter)
        result = Loader(c).load(ready, {}, journal, "run-1")
    assert result.counts == {"loaded": 1} and result.bytes_sent == big.stat().st_size
    assert reads and all(0 < size <= 1024 * 1024 for size in reads)  # never read whole
    [record] = httpx.get(f"{fresh}/_sandbox/records").json()["records"]
    assert (record["size"], record["relativePath"], record["locale"]) == (big.stat().st_size, "raw", "de")

    todo, _ = Loader(c).rows(ready, {})
    with c.session() as http:
        found = c.lookup(http, todo)
        c.finish(http, "run-1")
    assert found["BIG"]["vendor_id"] == f"{wb.SEGMENTS[1]}:de:raw:big.bin"
    assert found["BIG"]["extra"]["modifiedDate"] == record["modifiedDate"]
    assert ledger.load()["BIG"].extra["downloadUrl"] == found["BIG"]["asset"]["downloadUrl"]


def test_settings_are_checked_when_the_job_is_read() -> None:
    from assetferry.connectors.core.job import parse_job

    job = {"name": "x", "source": {"url": "m.csv"},
           "destination": {"vendor": "wordbee", "credentials": {"account_id": "env:A", "api_key": "env:B"},
                           "settings": {"project_id": 0, "relative_path": "../up", "throttle_wait_seconds": 2}}}
    with pytest.raises(ConfigError) as info:
        parse_job(job, where="job.yaml")
    text = str(info.value)
    assert "destination.settings.project_id" in text
    assert "relative_path" in text and "leaves the segment's asset folder" in text
    assert "destination.settings.throttle_wait_seconds" in text
    del job["destination"]["credentials"]["account_id"]
    with pytest.raises(ConfigError, match="destination.credentials.account_id"):
        parse_job(job, where="job.yaml")


def test_the_token_call_is_retried_when_the_vendor_stumbles(fresh: str) -> None:
    httpx.post(f"{fresh}/_sandbox/faults", json={"status": 503, "count": 2, "route": "auth"}).raise_for_status()
    # another spelling of the URL: a session of its own, whose fetch uses this fast policy
    url = fresh.replace("127.0.0.1", "localhost") + "/api"
    c = WordbeeConnector(url=url, settings={"project_id": wb.PROJECT}, policy=RetryPolicy(backoff=0.01),
                         credentials={"account_id": SecretStr(wb.ACCOUNT), "api_key": SecretStr(wb.KEY)})
    with c.session() as http:
        assert http.request("GET", f"/resources/assets/{wb.SEGMENTS[0]}/list", params={"scope": c.scope}).json() == []
        c.finish(http, "run")
    s = httpx.get(f"{fresh}/_sandbox/stats").json()
    assert (s["by_route"]["auth"], s["auth_tokens_issued"], s["by_route"]["list"], s["sessions"]) == (3, 1, 1, 0)


def test_a_token_released_between_ensure_and_send_is_still_sent_then_refreshed() -> None:
    """Another run's finish step may release the shared token while this thread is between
    ``ensure`` and the send: the old token goes out (the vendor refuses it and the caller
    re-authenticates) instead of the thread failing."""
    released: list[dict[str, str]] = []
    count = iter(range(10))
    auth = TokenAuth(lambda client: {"X-Token": f"token-{next(count)}"}, release=lambda c, h: released.append(h))
    client = httpx.Client()
    auth.ensure(client)
    auth.close(client)
    request = next(auth.auth_flow(httpx.Request("GET", "http://x/")))
    assert request.headers["X-Token"] == "token-0" and released == [{"X-Token": "token-0"}]
    auth.refresh(client)  # the vendor said "expired"
    assert next(auth.auth_flow(httpx.Request("GET", "http://x/"))).headers["X-Token"] == "token-1"
