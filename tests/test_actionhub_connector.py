"""The ActionHub connector below the flow: prepare's checks, one program per request (the
core's chunk-within-a-column rule), the 422/403/429 classifier, the dry-run plan, and lookups
through GET /assets paging, against the simulator over a real socket (no Prefect)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr

from assetferry.connectors.core.errors import AuthError
from assetferry.connectors.core.ledger import Ledger
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from assetferry.connectors.vendors.actionhub import SPEC, TRUNCATED, ActionHubConnector
from assetferry.connectors.vendors.base import Row
from assetferry.sandbox.actionhub import DEMO_API_KEY, DEMO_OTHER_PROGRAM_ID, DEMO_PROGRAM_ID, create_app
from assetferry.sandbox.server import running

A, B = DEMO_PROGRAM_ID, DEMO_OTHER_PROGRAM_ID


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running(create_app(per_second=None)) as root:
        yield root


@pytest.fixture
def hub(server: str) -> str:
    httpx.post(f"{server}/_sandbox/reset").raise_for_status()
    return server


def connector(root: str, key: str = DEMO_API_KEY, **settings: Any) -> ActionHubConnector:
    settings = {"program_id": A, "requests_per_second": 1000, **settings}
    return ActionHubConnector(url=root, settings=settings, credentials={"api_key": SecretStr(key)})


def canonical(rows: list[dict[str, Any]], tmp_path: Path) -> pd.DataFrame:
    good, rejects = canonicalize(RecordChunk(pd.DataFrame(rows), str(tmp_path / "m.csv"), 1), DuplicateTracker(),
                                 SPEC.required_columns)
    assert rejects.empty
    return good


def prepared(c: ActionHubConnector, rows: list[dict[str, Any]], tmp_path: Path) -> pd.DataFrame:
    ready, rejects = c.prepare(canonical(rows, tmp_path))
    assert rejects.empty, rejects.to_dict("records")
    return ready


def load(c: ActionHubConnector, ready: pd.DataFrame, tmp_path: Path) -> Any:
    with Ledger(str(tmp_path / "state")).writer("run", 0) as journal:
        return Loader(c).load(ready, {}, journal, "run")


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def records(root: str) -> list[dict[str, Any]]:
    return httpx.get(f"{root}/_sandbox/records").json()["records"]


def test_prepare_rejects_over_long_values_and_rows_without_a_program(tmp_path: Path) -> None:
    rows = [
        {"id": "ok", "title": "n" * 124, "parent": ""},
        {"id": "i" * 65, "title": "long id"},
        {"id": "long-title", "title": "t" * 125},
        {"id": "elsewhere", "title": "x", "parent": "not-covered"},
    ]
    frame = canonical(rows, tmp_path)
    ready, rejects = connector("http://unused", programs=[A, B]).prepare(frame)
    assert ready["id"].tolist() == ["ok"] and ready["_program"].tolist() == [A]
    got = {r["id"]: (r["field"], r["reason"]) for r in rejects.to_dict("records")}
    assert got["i" * 65] == ("id", "id is 65 characters; ActionHub accepts at most 64 (asset_id)")
    assert got["long-title"][0] == "title" and "125 characters" in got["long-title"][1]
    assert got["elsewhere"][0] == "parent" and "'not-covered' is not one of the job's programs" in got["elsewhere"][1]
    assert rejects["row"].tolist() == [2, 3, 4]  # where each came from

    no_default = ActionHubConnector(url="http://unused", settings={}, credentials={})
    ready, rejects = no_default.prepare(canonical([{"id": "a", "title": "x"}, {"id": "b", "parent": B}], tmp_path))
    assert ready["id"].tolist() == ["b"] and rejects["field"].tolist() == ["parent"]
    assert no_default.destination_key() == "by-parent" and connector("x").destination_key() == A


def test_truncate_names_cuts_titles_and_counts_them(tmp_path: Path) -> None:
    c = connector("http://unused", truncate_names=True)
    ready = prepared(c, [{"id": "a", "title": "t" * 200}, {"id": "b", "title": "short"}, {"id": "c"}], tmp_path)
    assert [c._asset(r) for r in ready.to_dict("records")] == [
        {"asset_id": "a", "asset_name": "t" * 124, "labels": []},
        {"asset_id": "b", "asset_name": "short", "labels": []},
        {"asset_id": "c", "labels": []},  # no title: no asset_name (the doc's type is not nullable)
    ]
    assert c.notes == {TRUNCATED: 1}


def test_settings_are_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    for bad in ({"program_id": "a", "programs": ["b"]}, {"assets_per_request": 0}, {"page_size": 101},
                {"program_id": "a\nb"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            SPEC.settings.model_validate(bad)


def test_requests_never_mix_programs_and_hold_up_to_n_assets(hub: str, tmp_path: Path) -> None:
    rows = [{"id": f"r{i:02d}", "title": f"R {i}", "tags": "a|b", "parent": B if i % 3 == 0 else ""}
            for i in range(20)]
    c = connector(hub, assets_per_request=4)
    ready = prepared(c, rows, tmp_path)
    units = Loader(c).units(Loader(c).rows(ready, {})[0])
    assert [(u.key, len(u.rows)) for u in units] == [(B, 4), (B, 3), (A, 4), (A, 4), (A, 4), (A, 1)]
    result = load(c, ready, tmp_path)
    assert result.counts == {"loaded": 20} and stats(hub)["by_route"]["upsert"] == 6
    where = {r["asset_id"]: (r["program_id"], r["labels"]) for r in records(hub)}
    assert where == {r["id"]: (B if r["parent"] else A, ["a", "b"]) for r in rows}


def test_a_422_naming_positions_rejects_those_rows_and_resends_the_rest(hub: str, tmp_path: Path) -> None:
    httpx.post(f"{hub}/_sandbox/refuse", json={"asset_ids": ["r02", "r05"]}).raise_for_status()
    c = connector(hub)
    result = load(c, prepared(c, [{"id": f"r{i:02d}", "title": "x"} for i in range(8)], tmp_path), tmp_path)
    assert result.counts == {"loaded": 6, "rejected": 2}
    assert {(o.id, o.field, o.reason) for o in result.outcomes} == {
        (i, "id", "ActionHub refused id: Value error, asset_id is not accepted") for i in ("r02", "r05")}
    assert stats(hub)["by_route"]["upsert"] == 2  # the refused request, then the six others
    assert sorted(r["asset_id"] for r in records(hub)) == [f"r{i:02d}" for i in range(8) if i not in (2, 5)]


def test_a_422_without_a_position_is_bisected(hub: str, tmp_path: Path) -> None:
    httpx.post(f"{hub}/_sandbox/poison", json={"asset_ids": ["r13"]}).raise_for_status()
    c = connector(hub)
    result = load(c, prepared(c, [{"id": f"r{i:02d}", "title": "x"} for i in range(16)], tmp_path), tmp_path)
    assert result.counts == {"loaded": 15, "rejected": 1}
    assert [o.id for o in result.outcomes] == ["r13"] and "Batch could not be processed" in result.outcomes[0].reason
    assert stats(hub)["by_route"]["upsert"] == 1 + 2 * 4  # 16 -> 8 -> 4 -> 2 -> 1


def test_a_program_the_key_does_not_cover_stops_with_an_auth_error_naming_it(hub: str, tmp_path: Path) -> None:
    c = connector(hub, program_id="someone-elses")
    with pytest.raises(AuthError) as info:
        load(c, prepared(c, [{"id": "a", "title": "x"}], tmp_path), tmp_path)
    assert "Could not validate API KEY" in str(info.value) and "'someone-elses'" in str(info.value)
    with pytest.raises(AuthError) as info:
        connector(hub, key="wrong-key-123456").find(["a"])
    assert "wrong-key-123456" not in str(info.value)


def test_classify_reads_the_fastapi_body() -> None:
    c = connector("http://unused", throttle_wait_seconds=3)
    request = httpx.Request("POST", "http://unused/assets", headers={"program-id": "p"})

    def verdict(status: int, body: Any) -> Any:
        return c.classify(httpx.Response(status, json=body, request=request))

    v = verdict(422, {"detail": [
        {"loc": ["body", "assets", 1, "asset_name"], "msg": "too long", "type": "string_too_long"},
        {"loc": ["body", "assets", 1, "labels"], "msg": "not a list", "type": "list_type"},
        {"loc": ["body", "assets", 4], "msg": "bad object", "type": "model_attributes_type"}]})
    assert v.action == "reject" and v.rows == {1: ("title", "ActionHub refused title: too long; not a list"),
                                               4: (None, "ActionHub refused the asset: bad object")}
    assert verdict(422, {"detail": [{"loc": ["body"], "msg": "x", "type": "value_error"}]}).rows is None
    assert verdict(403, {"detail": "Could not validate API KEY"}).action == "auth"
    assert verdict(429, {"detail": "Rate limit exceeded: 10 per 1 minute"}).retry_after == 60
    assert verdict(429, {"detail": "slow down"}).retry_after == 3
    honoured = c.classify(httpx.Response(429, json={"detail": "Rate limit exceeded: 10 per 1 minute"},
                                         headers={"Retry-After": "4"}, request=request))
    assert honoured.action == "retry" and honoured.retry_after is None  # the header wins
    assert verdict(500, {"detail": "x"}) is None  # the default table: retry


def test_plan_shows_the_one_request_with_the_key_masked(tmp_path: Path) -> None:
    c = connector("http://hub.example", api_version="1.0")
    ready = prepared(c, [{"id": "a", "title": "A", "tags": "x"}, {"id": "b", "parent": B}], tmp_path)
    items = [i.to_dict() for i in Loader(c).plan(ready, {})]
    assert [(i["ids"], i["action"]) for i in items] == [(["a"], "upsert"), (["b"], "upsert")]
    request = items[0]["requests"][0]
    assert request == {"method": "POST", "url": "http://hub.example/assets",
                       "headers": {"actionhub-key": "***", "program-id": A, "api-version": "1.0",
                                   "Content-Type": "application/json"},
                       "json": {"assets": [{"asset_id": "a", "asset_name": "A", "labels": ["x"]}]}}
    assert items[1]["requests"][0]["headers"]["program-id"] == B


def test_lookup_pages_through_get_assets(hub: str) -> None:
    # 250 assets whose ids contain each other ("x-1" is in "x-10", "x-100"...): search answers
    # several pages of near-misses; only an exact asset_id counts.
    seed = [{"asset_id": f"x-{i}", "asset_name": f"N{i}", "labels": ["x-1"]} for i in range(250)]
    httpx.post(f"{hub}/_sandbox/assets", json={"program_id": A, "assets": seed}).raise_for_status()
    c = connector(hub, page_size=20)
    found = c.find(["x-1", "x-249", "missing"])
    assert found == {"x-1": seed[1], "x-249": seed[249]}
    searched = stats(hub)["by_route"]["list"]
    assert searched > 3  # "x-1" matched every label: its search took several pages
    rows = [Row(id=f"x-{i}", data={"id": f"x-{i}", "_program": A}, index=i) for i in range(0, 250, 10)]
    with c.session() as http:
        many = c.lookup(http, rows)
    assert set(many) == {r.id for r in rows} and many["x-10"]["extra"] == {"program": A}
    assert stats(hub)["by_route"]["list"] - searched == 250 // 20 + 1  # one listing of the program
    assert [a["asset_id"] for a in c.iter_assets()] == [s["asset_id"] for s in seed]
    assert c.find(["x-1"], program=B) == {}


def test_a_429_without_retry_after_waits_for_the_window_the_body_names(tmp_path: Path) -> None:
    with running(create_app(per_second=4)) as root:  # answers "Rate limit exceeded: 4 per 1 second"
        c = connector(root, assets_per_request=1, requests_per_second=100)  # a client set too fast
        started = time.monotonic()
        result = load(c, prepared(c, [{"id": f"r{i}", "title": "x"} for i in range(10)], tmp_path), tmp_path)
        elapsed = time.monotonic() - started
        seen = stats(root)
    assert result.counts == {"loaded": 10}
    assert seen["throttled"] >= 1 and seen["by_route"]["upsert"] == 10 + seen["throttled"]
    assert seen["throttled"] <= 3 and 1.5 < elapsed < 8  # one wait per window, not a retry storm
