"""Tests for the ActionHub asset-metadata simulator, driven over a real socket."""

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, Query
from pydantic import BaseModel, Field

from assetferry.sandbox.actionhub import (
    AUTH_ERROR,
    DEMO_API_KEY,
    DEMO_OTHER_PROGRAM_ID,
    DEMO_PROGRAM_ID,
    ApiKey,
    create_app,
)
from assetferry.sandbox.server import running
from tests.sandbox_kit import FakeClock, SandboxBox, simulator_fixtures

HEADERS = {"actionhub-key": DEMO_API_KEY, "program-id": DEMO_PROGRAM_ID}
MISSING_PROGRAM = {"type": "missing", "loc": ["header", "program-id"], "msg": "Field required", "input": None}



@dataclass
class Box(SandboxBox):
    """The simulator under test (see tests/sandbox_kit.py)."""

    def post(self, *assets: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.api.post("/assets", json={"assets": list(assets)}, **kwargs)


def launch(stack: ExitStack, **kwargs: Any) -> Box:
    """Serve a fresh simulator on a real socket (no rate limit unless given) until `stack` closes."""
    clock = FakeClock()
    kwargs.setdefault("per_second", None)
    root = stack.enter_context(running(create_app(clock=clock, **kwargs)))
    api = stack.enter_context(httpx.Client(base_url=root, headers=HEADERS, timeout=5))
    return Box(api=api, root=root, clock=clock)


start, shared, box = simulator_fixtures(launch)


def detail(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 422, r.text
    return list(r.json()["detail"])


# ---- auth -------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_403_exact_body_and_not_admitted(box: Box) -> None:
    no_key = {"program-id": DEMO_PROGRAM_ID}
    responses = [
        httpx.post(f"{box.root}/assets", json={"assets": [{"asset_id": "a"}]}, headers=no_key),
        box.post({"asset_id": "a"}, headers={"actionhub-key": "wrong-secret-123"}),
        box.api.get("/assets", headers={"actionhub-key": ""}),
        box.api.post("/assets", content=b"{not json", headers={"actionhub-key": "wrong-secret-123"}),
    ]
    for r in responses:
        assert (r.status_code, r.json()) == (403, AUTH_ERROR)
        assert "wrong-secret-123" not in r.text
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["by_route"]) == (4, 0, {"upsert": 3, "list": 1})
    assert box.records() == []


def test_key_used_for_another_program_or_without_write_permission_is_403(start: Callable[..., Box]) -> None:
    keys = {DEMO_API_KEY: ApiKey((DEMO_PROGRAM_ID,)), "reader": ApiKey((DEMO_PROGRAM_ID,), "read")}
    box = start(keys=keys)
    r = box.post({"asset_id": "a"}, headers={"program-id": "someone-elses-program"})
    assert (r.status_code, r.json()) == (403, AUTH_ERROR)
    r = box.post({"asset_id": "a"}, headers={"actionhub-key": "reader"})
    assert (r.status_code, r.json()) == (403, AUTH_ERROR)
    assert box.api.get("/assets", headers={"actionhub-key": "reader"}).status_code == 200
    assert box.records() == []


def test_missing_program_id_is_422_header_loc_listed_with_body_errors(box: Box) -> None:
    only_key = {"actionhub-key": DEMO_API_KEY}
    r = httpx.post(f"{box.root}/assets", json={"assets": [{"asset_id": "a"}]}, headers=only_key)
    assert detail(r) == [MISSING_PROGRAM]
    r = httpx.post(f"{box.root}/assets", json={"assets": [{}]}, headers=only_key)
    assert [e["loc"] for e in detail(r)] == [["header", "program-id"], ["body", "assets", 0, "asset_id"]]
    assert detail(httpx.get(f"{box.root}/assets", headers=only_key)) == [MISSING_PROGRAM]
    assert box.stats()["rejected"] == 3 and box.records() == []


def test_api_version_header(box: Box) -> None:
    assert box.post({"asset_id": "a"}, headers={"api-version": "1.0"}).status_code == 200
    errors = detail(box.post({"asset_id": "b"}, headers={"api-version": "2.0"}))
    assert errors == [{
        "type": "literal_error",
        "loc": ["header", "api-version"],
        "msg": "Input should be '1.0'",
        "input": "2.0",
        "ctx": {"expected": "'1.0'"},
    }]
    assert [r["asset_id"] for r in box.records()] == ["a"]


# ---- upsert -----------------------------------------------------------------------------


def test_upsert_inserts_then_updates_and_reposting_is_idempotent(box: Box) -> None:
    batch = [
        {"asset_id": "a1", "asset_name": "Alpha", "labels": ["x", {"k": 1}, 3]},
        {"asset_id": "a2", "asset_name": "Beta"},
    ]
    for _ in range(2):
        r = box.post(*batch)
        assert r.status_code == 200 and r.json() == {"result": "success"}
    assert box.records() == [
        {"program_id": DEMO_PROGRAM_ID, "asset_id": "a1", "asset_name": "Alpha", "labels": batch[0]["labels"],
         "writes": 2},
        {"program_id": DEMO_PROGRAM_ID, "asset_id": "a2", "asset_name": "Beta", "labels": [], "writes": 2},
    ]
    # an update stores the asset as sent: labels replace, omitted fields reset; extra fields ignored
    assert box.post({"asset_id": "a1", "labels": ["y"], "colour": "red"}).status_code == 200
    assert box.records()[0] == {
        "program_id": DEMO_PROGRAM_ID, "asset_id": "a1", "asset_name": None, "labels": ["y"], "writes": 3,
    }
    stats = box.stats()
    assert (stats["assets"], stats["asset_writes"], stats["by_route"]["upsert"]) == (2, 5, 3)


def test_repeated_asset_id_in_one_batch_last_wins(box: Box) -> None:
    r = box.post({"asset_id": "d", "asset_name": "first"}, {"asset_id": "d", "asset_name": "second"})
    assert r.status_code == 200
    assert [(r["asset_name"], r["writes"]) for r in box.records()] == [("second", 2)]


def test_empty_batch_is_accepted(box: Box) -> None:
    assert box.post().json() == {"result": "success"}
    assert box.records() == []


def test_programs_are_isolated(box: Box) -> None:
    box.post({"asset_id": "same", "asset_name": "in one"})
    box.post({"asset_id": "same", "asset_name": "in two"}, headers={"program-id": DEMO_OTHER_PROGRAM_ID})
    assert [(r["program_id"], r["asset_name"], r["writes"]) for r in box.records()] == [
        (DEMO_PROGRAM_ID, "in one", 1),
        (DEMO_OTHER_PROGRAM_ID, "in two", 1),
    ]
    other = box.api.get("/assets", headers={"program-id": DEMO_OTHER_PROGRAM_ID}).json()
    assert other["items"] == [{"asset_id": "same", "asset_name": "in two", "labels": []}]


# ---- validation ---------------------------------------------------------------------------


def test_field_limits_name_the_failing_index_and_nothing_is_stored(box: Box) -> None:
    rows = [{"asset_id": f"id{i}", "asset_name": "n"} for i in range(5)]
    rows[3]["asset_name"] = "n" * 125
    rows[1]["asset_id"] = "i" * 65
    errors = detail(box.post(*rows))
    assert errors == [
        {
            "type": "string_too_long",
            "loc": ["body", "assets", 1, "asset_id"],
            "msg": "String should have at most 64 characters",
            "input": "i" * 65,
            "ctx": {"max_length": 64},
        },
        {
            "type": "string_too_long",
            "loc": ["body", "assets", 3, "asset_name"],
            "msg": "String should have at most 124 characters",
            "input": "n" * 125,
            "ctx": {"max_length": 124},
        },
    ]
    assert box.records() == [] and box.stats()["rejected"] == 1
    assert box.post({"asset_id": "i" * 64, "asset_name": "n" * 124}).status_code == 200


def test_other_shape_errors(box: Box) -> None:
    cases: list[tuple[Any, list[Any], str]] = [
        ({}, ["body", "assets"], "missing"),
        ({"assets": "x"}, ["body", "assets"], "list_type"),
        ({"assets": ["x"]}, ["body", "assets", 0], "model_attributes_type"),
        ({"assets": [{"asset_name": "n"}]}, ["body", "assets", 0, "asset_id"], "missing"),
        ({"assets": [{"asset_id": 7}]}, ["body", "assets", 0, "asset_id"], "string_type"),
        ({"assets": [{"asset_id": "a", "asset_name": None}]}, ["body", "assets", 0, "asset_name"], "string_type"),
        ({"assets": [{"asset_id": "a", "labels": "tag"}]}, ["body", "assets", 0, "labels"], "list_type"),
        ([1], ["body"], "model_attributes_type"),
    ]
    for body, loc, kind in cases:
        errors = detail(box.api.post("/assets", json=body))
        assert [(e["loc"], e["type"]) for e in errors] == [(loc, kind)], body
        assert all(isinstance(e["msg"], str) and e["msg"] for e in errors)
    assert box.records() == []


def test_malformed_or_missing_body(box: Box) -> None:
    errors = detail(box.api.post("/assets", content=b'{"assets": [', headers={"content-type": "application/json"}))
    assert errors == [{
        "type": "json_invalid", "loc": ["body", 12], "msg": "JSON decode error", "input": {},
        "ctx": {"error": "Expecting value"},
    }]
    missing = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    assert detail(box.api.post("/assets")) == [missing]
    errors = detail(box.api.post("/assets", content=b"assets", headers={"content-type": "text/plain"}))
    assert [(e["loc"], e["type"]) for e in errors] == [(["body"], "model_attributes_type")]


def _reference_app() -> FastAPI:
    """What a FastAPI service declaring the doc's schema answers (the vendor is a FastAPI app)."""

    class Asset(BaseModel):
        asset_id: str = Field(max_length=64)
        asset_name: str = Field(None, max_length=124)
        labels: list[Any] = []

    class AssetList(BaseModel):
        assets: Annotated[list[Asset], Field(max_length=3)]

    app = FastAPI()

    @app.post("/assets")
    def post(body: AssetList, program_id: str = Header(alias="program-id")) -> dict[str, str]:
        return {"result": "success"}

    @app.get("/assets")
    def get(
        program_id: str = Header(alias="program-id"),
        search: str | None = None,
        page: int = Query(1, ge=1),
        size: int = Query(50, ge=1, le=100),
    ) -> dict[str, Any]:
        return {}

    return app


def test_422_bodies_match_a_real_fastapi_app_with_the_documented_schema(start: Callable[..., Box]) -> None:
    box = start(max_assets=3)
    bodies: list[Any] = [
        {"assets": [{"asset_id": "x" * 65, "asset_name": 5, "labels": {}}, {}, "s"]},
        {"assets": [{"asset_id": "a"}] * 4},
        {"assets": None},
        {"nothing": 1},
        "text",
    ]
    queries = ["page=0&size=101", "page=x", "size=0", "page=&search=q"]
    with running(_reference_app()) as ref:
        for headers in ({}, {"program-id": "p"}):
            for body in bodies:
                want = httpx.post(f"{ref}/assets", json=body, headers=headers)
                got = httpx.post(f"{box.root}/assets", json=body, headers={"actionhub-key": DEMO_API_KEY, **headers})
                assert (got.status_code, got.json()) == (want.status_code, want.json()), body
            for raw in (b'{"assets": [', b"[1,", b"\xff"):
                json_headers = {**headers, "content-type": "application/json"}
                want = httpx.post(f"{ref}/assets", content=raw, headers=json_headers)
                got = httpx.post(
                    f"{box.root}/assets", content=raw, headers={"actionhub-key": DEMO_API_KEY, **json_headers}
                )
                assert (got.status_code, got.json()) == (want.status_code, want.json()), raw
            for query in queries:
                want = httpx.get(f"{ref}/assets?{query}", headers=headers)
                got = httpx.get(f"{box.root}/assets?{query}", headers={"actionhub-key": DEMO_API_KEY, **headers})
                assert (got.status_code, got.json()) == (want.status_code, want.json()), query


def test_batch_cap_is_an_indexless_422(start: Callable[..., Box]) -> None:
    box = start(max_assets=2)
    rows = [{"asset_id": "a"}, {"asset_id": "b"}, {"asset_id": "c" * 99}]
    errors = detail(box.post(*rows))
    assert [(e["loc"], e["type"], e["ctx"]) for e in errors] == [
        (["body", "assets"], "too_long", {"field_type": "List", "max_length": 2, "actual_length": 3})
    ]
    assert box.post(*rows[:2]).status_code == 200
    assert box.control("POST", "limits", json={"max_assets": 3}).json() == {"per_second": None, "max_assets": 3}
    assert detail(box.post(*rows))[0]["loc"] == ["body", "assets", 2, "asset_id"]


def test_poisoned_asset_id_fails_the_whole_batch_without_an_index(box: Box) -> None:
    assert box.control("POST", "poison", json={"asset_ids": ["bad", "worse"]}).json() == {"asset_ids": ["bad", "worse"]}
    rows = [{"asset_id": f"ok{i}"} for i in range(4)]
    errors = detail(box.post(*rows[:2], {"asset_id": "bad"}, *rows[2:]))
    assert len(errors) == 1
    assert (errors[0]["loc"], errors[0]["type"]) == (["body"], "value_error")
    assert errors[0]["msg"] == "Value error, Batch could not be processed"
    assert not any(isinstance(part, int) for part in errors[0]["loc"])
    assert box.records() == []
    # the halves without the poisoned row go through (what a split-the-batch client relies on)
    assert box.post(*rows[:2]).status_code == 200 and box.post(*rows[2:]).status_code == 200
    assert detail(box.post({"asset_id": "worse"}))[0]["loc"] == ["body"]
    # an indexed field error wins over the poison (model checks run only on valid fields)
    assert detail(box.post({"asset_id": "bad"}, {"asset_id": "z" * 65}))[0]["loc"] == ["body", "assets", 1, "asset_id"]
    box.control("POST", "poison", json={"asset_ids": []})
    assert box.post({"asset_id": "bad"}).status_code == 200
    assert len(box.records()) == 5
    assert box.control("POST", "poison", json={"asset_ids": "bad"}).status_code == 400


def test_refused_asset_ids_fail_with_their_index(box: Box) -> None:
    assert box.control("POST", "refuse", json={"asset_ids": ["no1", "no2"]}).json() == {"asset_ids": ["no1", "no2"]}
    errors = detail(box.post({"asset_id": "ok0"}, {"asset_id": "no1"}, {"asset_id": "ok2"}, {"asset_id": "no2"}))
    assert [(e["loc"], e["type"], e["msg"]) for e in errors] == [
        (["body", "assets", 1, "asset_id"], "value_error", "Value error, asset_id is not accepted"),
        (["body", "assets", 3, "asset_id"], "value_error", "Value error, asset_id is not accepted"),
    ]
    assert box.records() == []  # one bad asset refuses the whole request
    assert box.post({"asset_id": "ok0"}, {"asset_id": "ok2"}).status_code == 200
    # a field limit on another asset is reported with it, in index order
    errors = detail(box.post({"asset_id": "z" * 65}, {"asset_id": "no2"}))
    assert [e["loc"] for e in errors] == [["body", "assets", 0, "asset_id"], ["body", "assets", 1, "asset_id"]]
    box.control("POST", "refuse", json={"asset_ids": []})
    assert box.post({"asset_id": "no1"}).status_code == 200
    assert box.control("POST", "refuse", json={"asset_ids": "no1"}).status_code == 400


def test_demo_job_is_a_valid_job_for_the_demo_manifest(tmp_path: Any) -> None:
    import csv
    from contextlib import ExitStack
    from pathlib import Path

    import yaml

    from assetferry.sandbox import actionhub

    demo_dir = Path(actionhub.__file__).parent / "demo"
    with ExitStack() as stack:
        job, env = actionhub.demo_job("http://127.0.0.1:1", demo_dir, stack)
    assert env == {"ASSETFERRY_DEMO_ACTIONHUB_KEY": DEMO_API_KEY}
    assert job["destination"]["credentials"] == {"api_key": "env:ASSETFERRY_DEMO_ACTIONHUB_KEY"}
    assert DEMO_API_KEY not in yaml.safe_dump(job)
    with open(job["source"]["url"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and len({r["id"] for r in rows}) == 36
    assert {r["parent"] for r in rows} == {"", DEMO_OTHER_PROGRAM_ID}
    assert sum(len(r["title"]) > 124 for r in rows) == 1  # shows truncate_names


# ---- GET /assets ------------------------------------------------------------------------------


def test_list_pages_with_total_page_size(box: Box) -> None:
    box.post(*[{"asset_id": f"id{i}", "asset_name": f"Name {i}"} for i in range(5)])
    box.post({"asset_id": "id0", "asset_name": "Renamed"})  # an update keeps its place
    default = box.api.get("/assets").json()
    assert (default["total"], default["page"], default["size"], len(default["items"])) == (5, 1, 50, 5)
    assert default["items"][0] == {"asset_id": "id0", "asset_name": "Renamed", "labels": []}
    seen = []
    for page in (1, 2, 3, 4):
        body = box.api.get("/assets", params={"page": page, "size": 2}).json()
        assert (body["total"], body["page"], body["size"]) == (5, page, 2)
        seen.append([a["asset_id"] for a in body["items"]])
    assert seen == [["id0", "id1"], ["id2", "id3"], ["id4"], []]
    assert box.api.get("/assets", params={"size": 100}).status_code == 200
    errors = detail(box.api.get("/assets", params={"page": 0, "size": 101}))
    assert [(e["loc"], e["type"]) for e in errors] == [
        (["query", "page"], "greater_than_equal"),
        (["query", "size"], "less_than_equal"),
    ]
    assert box.stats()["by_route"]["list"] == 7


def test_search_matches_any_field_case_insensitively(box: Box) -> None:
    box.post(
        {"asset_id": "cat-001", "asset_name": "Kitten", "labels": ["pets"]},
        {"asset_id": "dog-002", "asset_name": "Puppy", "labels": ["Animals", {"colour": "brown"}]},
        {"asset_id": "car-003", "asset_name": "Sedan"},
    )

    def ids(term: str) -> list[str]:
        body = box.api.get("/assets", params={"search": term}).json()
        assert body["total"] == len(body["items"])
        return [a["asset_id"] for a in body["items"]]

    assert ids("CAT") == ["cat-001"]
    assert ids("puppy") == ["dog-002"]
    assert ids("animals") == ["dog-002"]
    assert ids("brown") == ["dog-002"]
    assert ids("-00") == ["cat-001", "dog-002", "car-003"]
    assert ids("") == ["cat-001", "dog-002", "car-003"]
    assert ids("nothing") == []


# ---- rate limit ---------------------------------------------------------------------------------


def test_per_second_limit_answers_429_per_key(start: Callable[..., Box]) -> None:
    box = start(per_second=2, keys={DEMO_API_KEY: ApiKey((DEMO_PROGRAM_ID,)), "k2": ApiKey((DEMO_PROGRAM_ID,))})
    assert box.api.get("/assets", headers={"actionhub-key": "wrong"}).status_code == 403  # not counted
    statuses = [box.post({"asset_id": f"a{i}"}) for i in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json() == {"detail": "Rate limit exceeded: 2 per 1 second"}
    assert "retry-after" not in statuses[2].headers
    assert box.api.get("/assets", headers={"actionhub-key": "k2"}).status_code == 200  # another key's window
    box.clock.advance(0.5)
    assert box.api.get("/assets").status_code == 429
    box.clock.advance(0.5)
    assert box.api.get("/assets").status_code == 200
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["throttled"]) == (7, 4, 2)
    assert [r["asset_id"] for r in box.records()] == ["a0", "a1"]


def test_limits_change_live_and_reset_restores_them(start: Callable[..., Box]) -> None:
    box = start(per_second=5)
    assert box.control("POST", "limits", json={"per_second": 1}).json() == {"per_second": 1, "max_assets": 1000}
    assert [box.api.get("/assets").status_code for _ in range(2)] == [200, 429]
    box.control("POST", "limits", json={"per_second": None})
    assert all(box.api.get("/assets").status_code == 200 for _ in range(10))
    for bad in ({"per_second": 0}, {"max_assets": "10"}, {"per_second": True}):
        assert box.control("POST", "limits", json=bad).status_code == 400
    box.control("POST", "reset")
    box.clock.advance(5)
    assert [box.api.get("/assets").status_code for _ in range(6)] == [200] * 5 + [429]


# ---- faults, records, reset --------------------------------------------------------------------


def test_fault_before_refuses_and_stores_nothing(box: Box) -> None:
    fault = {"status": 503, "count": 2, "retry_after": 3, "route": "upsert"}
    assert box.control("POST", "faults", json=fault).status_code == 200
    assert box.api.get("/assets").status_code == 200  # other route untouched
    for _ in range(2):
        r = box.post({"asset_id": "a"})
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"detail": "Service Unavailable"}, "3")
    assert box.records() == []
    assert box.post({"asset_id": "a"}).status_code == 200
    box.control("POST", "faults", json={"status": 429, "body": {"error": "slow down"}})
    r = box.api.get("/assets")
    assert (r.status_code, r.json(), "retry-after" in r.headers) == (429, {"error": "slow down"}, False)
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["throttled"]) == (5, 2, 1)


def test_fault_after_stores_then_answers_the_error(box: Box) -> None:
    box.control("POST", "faults", json={"status": 500, "count": 1, "route": "upsert", "when": "after"})
    assert detail(box.post({"asset_id": "x" * 65}))  # a refused batch does not take the fault
    r = box.post({"asset_id": "a", "asset_name": "kept"})
    assert (r.status_code, r.json()) == (500, {"detail": "Internal Server Error"})
    assert [(x["asset_id"], x["asset_name"], x["writes"]) for x in box.records()] == [("a", "kept", 1)]
    # reconcile: the client finds the asset; a blind resend would still be safe (upsert)
    assert box.api.get("/assets", params={"search": "a"}).json()["total"] == 1
    assert box.post({"asset_id": "a", "asset_name": "kept"}).status_code == 200
    assert [(x["asset_id"], x["writes"]) for x in box.records()] == [("a", 2)]


def test_bad_fault_requests_are_400(box: Box) -> None:
    for bad in ({"status": 200}, {"status": 500, "count": 0}, {"status": 500, "route": "upload"},
                {"status": 500, "when": "later"}, {"status": 500, "retry_after": -1}):
        assert box.control("POST", "faults", json=bad).status_code == 400, bad


def test_seeded_assets_exist_with_zero_writes(box: Box) -> None:
    seed = {"program_id": DEMO_PROGRAM_ID, "assets": [{"asset_id": "old", "asset_name": "Old", "labels": ["l"]}]}
    assert box.control("POST", "assets", json=seed).json() == {"seeded": 1}
    assert box.records() == [
        {"program_id": DEMO_PROGRAM_ID, "asset_id": "old", "asset_name": "Old", "labels": ["l"], "writes": 0}
    ]
    assert box.api.get("/assets").json()["total"] == 1
    stats = box.stats()
    assert (stats["requests"], stats["asset_writes"], stats["assets"]) == (1, 0, 1)
    assert box.control("POST", "assets", json={"program_id": 1, "assets": []}).status_code == 400
    assert box.control("POST", "assets", json={"program_id": "p", "assets": [{}]}).status_code == 400


def test_reset_clears_state_counters_faults_poison_and_refusals(box: Box) -> None:
    box.post({"asset_id": "a"})
    box.control("POST", "faults", json={"status": 502})
    box.control("POST", "poison", json={"asset_ids": ["b"]})
    box.control("POST", "refuse", json={"asset_ids": ["c"]})
    box.control("POST", "limits", json={"max_assets": 1})
    snapshot = box.control("POST", "reset").json()
    assert snapshot == {
        "requests": 0, "accepted": 0, "throttled": 0, "rejected": 0, "asset_writes": 0, "assets": 0,
        "by_route": {"upsert": 0, "list": 0},
    }
    assert box.records() == []
    assert box.post({"asset_id": "b"}, {"asset_id": "c"}).status_code == 200
