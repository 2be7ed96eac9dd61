"""Tests for the Ex Libris Esploro simulator, over real sockets: file links, sets, the "Load files" job."""

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from assetferry.sandbox.esploro import DAILY_MESSAGE, DEMO_API_KEY, DEMO_ASSET_IDS, DEMO_JOB_ID, PER_SECOND_MESSAGE, create_app
from assetferry.sandbox.server import running
from tests.sandbox_kit import FakeClock, SandboxBox

ASSETS = DEMO_ASSET_IDS.split(",")
AUTH = {"Authorization": f"apikey {DEMO_API_KEY}", "Accept": "application/json"}
PDF = b"%PDF-1.7\n" + os.urandom(50_000)
DATA = os.urandom(3000)
FILES = {"paper.pdf": (PDF, "application/pdf"), "data.csv": (DATA, "text/csv")}



@dataclass
class Box(SandboxBox):
    """The simulator under test (see tests/sandbox_kit.py)."""
    files: str  # root URL of the test file server

    def records(self) -> dict[str, Any]:
        return {r["asset_id"]: r for r in self.control("GET", "records").json()["records"]}

    def url(self, name: str) -> str:
        return f"{self.files}/files/{name}"


def file_server() -> Starlette:
    """Stand-in for wherever the files live (presigned S3 URLs are tested separately with moto)."""

    async def serve(request: Request) -> Response:
        found = FILES.get(request.path_params["name"])
        if found is None:
            return Response(b"missing", status_code=404)
        return Response(found[0], media_type=found[1])

    return Starlette(routes=[Route("/files/{name}", serve)])


@pytest.fixture(scope="module")
def files_root() -> Iterator[str]:
    with running(file_server()) as root:
        yield root


def launch(stack: ExitStack, files: str, **kwargs: Any) -> Box:
    clock = FakeClock(1_760_000_000.0)
    kwargs.setdefault("per_second", 10_000)
    root = stack.enter_context(running(create_app(clock=clock, **kwargs)))
    api = stack.enter_context(httpx.Client(base_url=root, headers=AUTH, timeout=10))
    return Box(api=api, root=root, clock=clock, files=files)


@pytest.fixture
def start(files_root: str) -> Iterator[Callable[..., Box]]:
    with ExitStack() as stack:
        yield lambda **kwargs: launch(stack, files_root, **kwargs)


@pytest.fixture(scope="module")
def shared(files_root: str) -> Iterator[Box]:
    with ExitStack() as stack:
        yield launch(stack, files_root)


@pytest.fixture
def box(shared: Box) -> Box:
    assert shared.control("POST", "reset").status_code == 200
    return shared


def link(url: str, title: str = "Paper", supplemental: str = "false", **extra: str) -> dict[str, str]:
    return {"link.title": title, "link.url": url, "link.description": "desc", "link.type": "accepted",
            "link.supplemental": supplemental, **extra}


def patch(api: httpx.Client, asset_id: str, links: list[dict[str, str]], action: str = "add") -> httpx.Response:
    body = {"records": [{"temporary": {"linksToExtract": links}}]}
    return api.post(f"/esploro/v1/assets/{asset_id}", params={"op": "patch", "action": action}, json=body)


def assert_exl(r: httpx.Response, status: int, code: str, message: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["errorsExist"] is True and body["result"] is None
    error = body["errorList"]["error"][0]
    assert error["errorCode"] == code
    assert error["trackingId"].startswith("E01-")
    if message is not None:
        assert error["errorMessage"] == message
    return dict(error)


def make_set(api: httpx.Client, name: str = "load-set", members: list[str] | None = None) -> str:
    body = {"name": name, "description": "d", "type": {"value": "ITEMIZED"}, "content": {"value": "IER"},
            "private": {"value": "false"}, "status": {"value": "ACTIVE"}}
    r = api.post("/almaws/v1/conf/sets", json=body)
    assert r.status_code == 200, r.text
    set_id = str(r.json()["id"])
    if members:
        body = {"members": {"member": [{"id": m} for m in members]}}
        r = api.post(f"/almaws/v1/conf/sets/{set_id}", params={"op": "add_members"}, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["number_of_members"]["value"] == len(members)
    return set_id


def run_job(api: httpx.Client, set_id: str) -> httpx.Response:
    params = [{"name": {"value": "set_id"}, "value": set_id}, {"name": {"value": "job_name"}, "value": "t"}]
    return api.post(f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", params={"op": "run"}, json={"parameter": params})


def wait_job(api: httpx.Client, run: httpx.Response) -> dict[str, Any]:
    assert run.status_code == 200, run.text
    link_url = run.json()["additional_info"]["link"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = api.get(link_url).json()
        if body["status"]["value"] not in ("QUEUED", "RUNNING"):
            return dict(body)
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def counters(instance: dict[str, Any]) -> dict[str, int]:
    return {c["type"]["value"].split(".", 1)[1]: int(c["value"]) for c in instance["counter"]}


# ---- auth -------------------------------------------------------------------------------------


def test_auth_missing_invalid_read_only_and_query_parameter(start: Callable[..., Box]) -> None:
    box = start(api_keys={DEMO_API_KEY: "rw", "ro-key": "ro"})
    path = f"/esploro/v1/assets/{ASSETS[0]}"
    json_only = {"Accept": "application/json"}
    message = "API-key not defined or not configured to allow this API."
    assert_exl(httpx.get(box.root + path, headers=json_only), 400, "UNAUTHORIZED", message)
    assert_exl(httpx.get(box.root + path, headers={**json_only, "Authorization": "Bearer x"}), 400, "UNAUTHORIZED")
    r = httpx.get(box.root + path, headers={**json_only, "Authorization": "apikey wrong-key"})
    assert_exl(r, 403, "INVALID_REQUEST", "Invalid API Key")
    assert "wrong-key" not in r.text  # a presented key is never echoed
    read_only = {**json_only, "Authorization": "apikey ro-key"}
    assert httpx.get(box.root + path, headers=read_only).status_code == 200
    r = httpx.post(box.root + path, params={"op": "patch", "action": "add"}, headers=read_only, json={"records": [{}]})
    assert_exl(r, 400, "UNAUTHORIZED", message)
    # the real API also takes ?apikey=; accepted here but counted, since clients must use the header
    assert httpx.get(box.root + path, params={"apikey": DEMO_API_KEY}, headers=json_only).status_code == 200
    stats = box.stats()
    assert stats["apikey_in_query"] == 1
    assert (stats["requests"], stats["accepted"], stats["by_route"]["get_asset"]) == (6, 2, 5)


def test_errors_and_bodies_are_xml_unless_json_is_asked_for(box: Box) -> None:
    r = httpx.get(f"{box.root}/esploro/v1/assets/{ASSETS[0]}")
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/xml")
    assert '<web_service_result xmlns="http://com/exlibris/urm/general/xmlbeans">' in r.text
    assert "<errorCode>UNAUTHORIZED</errorCode>" in r.text and "<trackingId>E01-" in r.text
    r = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}", headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.text.startswith("<?xml") and f"<assetId>{ASSETS[0]}</assetId>" in r.text
    r = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}", params={"format": "json"}, headers={"Accept": "*/*"})
    assert r.json()["records"][0]["originalRepository"] == {"assetId": ASSETS[0]}


# ---- assets and the patch call ----------------------------------------------------------------


def test_get_asset_single_and_comma_list_and_unknown_id(box: Box) -> None:
    r = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}")
    assert r.status_code == 200
    body = r.json()
    assert body["totalRecordCount"] == 1
    record = body["records"][0]
    assert record["originalRepository"] == {"assetId": ASSETS[0]}
    assert record["files"] == [] and record["temporary"] == {}
    both = box.api.get(f"/esploro/v1/assets/{ASSETS[0]},{ASSETS[1]},nope").json()
    assert [x["originalRepository"]["assetId"] for x in both["records"]] == ASSETS[:2]
    r = box.api.get("/esploro/v1/assets/123")
    assert_exl(r, 400, "402203", "Input parameters assetId 123 is not valid.")
    assert int(r.headers["X-Exl-Api-Remaining"]) == 100_000 - 3


def test_patch_queues_links_and_resending_duplicates_them(box: Box) -> None:
    first = link(box.url("paper.pdf"), supplemental="true")
    r = patch(box.api, ASSETS[0], [first, link(box.url("data.csv"), "Data")])
    assert r.status_code == 200, r.text
    pending = r.json()["records"][0]["temporary"]["linksToExtract"]
    assert pending[0] == first and [p["link.title"] for p in pending] == ["Paper", "Data"]
    assert patch(box.api, ASSETS[0], [first]).status_code == 200  # action=add appends: no de-duplication
    get = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").json()["records"][0]
    assert [p["link.url"] for p in get["temporary"]["linksToExtract"]].count(first["link.url"]) == 2
    links = box.records()[ASSETS[0]]["links"]
    assert [(k["title"], k["status"], k["extracted"]) for k in links] == [
        ("Paper", "pending", False), ("Data", "pending", False), ("Paper", "pending", False)]
    assert links[0]["supplemental"] is True and links[1]["supplemental"] is False
    assert box.stats()["links_queued"] == 3 and box.stats()["pending_links"] == 3


def test_action_replace_swaps_the_pending_queue_and_other_fields_follow_add_rules(box: Box) -> None:
    patch(box.api, ASSETS[0], [link(box.url("paper.pdf")), link(box.url("data.csv"))])
    r = patch(box.api, ASSETS[0], [link(box.url("data.csv"), "Only")], action="replace")
    assert [p["link.title"] for p in r.json()["records"][0]["temporary"]["linksToExtract"]] == ["Only"]
    assert [k["status"] for k in box.records()[ASSETS[0]]["links"]] == ["discarded", "discarded", "pending"]
    note = {"records": [{"grants.note": "n"}]}
    box.api.post(f"/esploro/v1/assets/{ASSETS[0]}", params={"op": "patch", "action": "replace"}, json=note)
    assert box.stats()["pending_links"] == 1  # replace without temporary leaves the queue alone
    url = f"/esploro/v1/assets/{ASSETS[1]}"
    box.api.post(url, params={"op": "patch", "action": "add"}, json={"records": [{"grants.note": "a"}]})
    r = box.api.post(url, params={"op": "patch", "action": "add"}, json={"records": [{"grants.note": "b"}]})
    assert r.json()["records"][0]["grants.note"] == "a"  # add fills simple fields only when empty
    r = box.api.post(url, params={"op": "patch", "action": "replace"}, json={"records": [{"grants.note": "b"}]})
    assert r.json()["records"][0]["grants.note"] == "b"


def test_patch_validation_refuses_and_stores_nothing(box: Box) -> None:
    url = f"/esploro/v1/assets/{ASSETS[0]}"
    add = {"op": "patch", "action": "add"}
    good = {"records": [{"temporary": {"linksToExtract": [link(box.url("paper.pdf"))]}}]}
    bad_links = [{"link.title": "no url"}, link("http://x/a", supplemental="yes")]
    for item in [*bad_links, {**link("http://x/a"), "link.type": 5}]:
        assert_exl(patch(box.api, ASSETS[0], [item]), 400, "GENERAL_ERROR")
    for body in ({"records": []}, {"records": [{}, {}]}, {"nope": 1}, [1]):
        assert_exl(box.api.post(url, params=add, json=body), 400, "GENERAL_ERROR")
    assert_exl(box.api.post(url, params={"op": "patch"}, json=good), 400, "GENERAL_ERROR")  # action missing
    assert_exl(box.api.post(url, params={"op": "delete", "action": "add"}, json=good), 400, "GENERAL_ERROR")
    xml = b"<records><record><temporary><linksToExtract/></temporary></record></records>"
    r = box.api.post(url, params=add, content=xml, headers={"Content-Type": "application/xml"})
    assert "JSON format only" in assert_exl(r, 400, "GENERAL_ERROR")["errorMessage"]
    r = box.api.post(url, params=add, content=b"{}", headers={"Content-Type": "text/plain"})
    assert_exl(r, 415, "GENERAL_ERROR")
    r = box.api.post(url, params=add, content=b"{oops", headers={"Content-Type": "application/json"})
    assert_exl(r, 400, "GENERAL_ERROR")
    assert_exl(patch(box.api, "991999999990561", [link(box.url("paper.pdf"))]), 400, "402203")
    assert box.records()[ASSETS[0]]["links"] == [] and box.stats()["links_queued"] == 0


def test_delete_is_not_supported_and_unknown_paths_use_exlibris_body(box: Box) -> None:
    assert_exl(box.api.delete(f"/esploro/v1/assets/{ASSETS[0]}"), 405, "GENERAL_ERROR")
    assert_exl(box.api.get("/esploro/v1/nothing/here/at/all"), 404, "GENERAL_ERROR")


# ---- the Load files job -----------------------------------------------------------------------


def test_load_files_job_downloads_links_records_md5_and_marks_failures(box: Box) -> None:
    patch(box.api, ASSETS[0], [link(box.url("paper.pdf"), "Paper", "true"), link(box.url("missing.pdf"), "Gone")])
    patch(box.api, ASSETS[1], [link(box.url("data.csv"), "Data"), link(box.url("data.csv"), "Data")])
    patch(box.api, ASSETS[2], [link("www.example.org/no-scheme.pdf", "Bad")])
    set_id = make_set(box.api, members=ASSETS)
    run = run_job(box.api, set_id)
    job = run.json()
    assert job["id"] == DEMO_JOB_ID and job["parameter"][0] == {"name": {"value": "set_id"}, "value": set_id}
    instance_id = job["additional_info"]["link"].rsplit("/", 1)[1]
    assert job["additional_info"]["value"].startswith(f"Job no. {instance_id} triggered on ")
    done = wait_job(box.api, run)
    assert done["status"] == {"value": "COMPLETED_SUCCESS", "desc": "Completed Successfully"}
    assert done["progress"] == 100 and done["id"] == instance_id and "end_time" in done
    assert counters(done) == {"asset_succeeded": 1, "asset_partial_succeeded": 1, "asset_failed": 1,
                              "file_uploaded": 3, "file_failed_to_upload": 2, "file_skipped_upload": 0}
    record = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").json()["records"][0]
    assert record["temporary"] == {}
    [paper] = record["files"]
    assert paper["file.name"] == "paper.pdf" and paper["file.size"] == str(len(PDF))
    assert paper["file.mimeType"] == "application/pdf" and paper["file.supplemental"] == "yes"
    assert paper["file.displayName"] == "Paper" and paper["file.type"] == "accepted"
    records = box.records()
    paper_rec, gone = records[ASSETS[0]]["links"]
    assert paper_rec["md5"] == hashlib.md5(PDF).hexdigest() and paper_rec["size"] == len(PDF)
    assert paper_rec["extracted"] is True and paper_rec["job_instance_id"] == instance_id
    assert gone["status"] == "failed" and "HTTP 404" in gone["error"] and gone["md5"] is None
    data = records[ASSETS[1]]["links"]
    assert [d["md5"] for d in data] == [hashlib.md5(DATA).hexdigest()] * 2  # duplicates stay duplicates
    assert len(box.api.get(f"/esploro/v1/assets/{ASSETS[1]}").json()["records"][0]["files"]) == 2
    assert records[ASSETS[2]]["links"][0]["status"] == "failed"
    stats = box.stats()
    assert (stats["files_extracted"], stats["files_failed"], stats["pending_links"]) == (3, 2, 0)
    assert stats["bytes_fetched"] == len(PDF) + 2 * len(DATA)


def test_presigned_s3_url_from_moto_is_downloaded(box: Box, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="esploro-sandbox")
    s3.put_object(Bucket="esploro-sandbox", Key="dir/thesis final.pdf", Body=PDF)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "esploro-sandbox", "Key": "dir/thesis final.pdf"})
    patch(box.api, ASSETS[0], [link(url, "Thesis")])
    assert wait_job(box.api, run_job(box.api, make_set(box.api, members=[ASSETS[0]])))["progress"] == 100
    [rec] = box.records()[ASSETS[0]]["links"]
    assert (rec["status"], rec["file_name"]) == ("extracted", "thesis final.pdf")
    assert rec["md5"] == hashlib.md5(PDF).hexdigest() and rec["size"] == len(PDF)


def test_empty_set_completes_with_no_bulks_and_oversize_files_fail(start: Callable[..., Box]) -> None:
    box = start(max_file_bytes=len(DATA))
    assert wait_job(box.api, run_job(box.api, make_set(box.api, "empty")))["status"]["value"] == "COMPLETED_NO_BULKS"
    patch(box.api, ASSETS[0], [link(box.url("paper.pdf")), link(box.url("data.csv"))])
    done = wait_job(box.api, run_job(box.api, make_set(box.api, "two", [ASSETS[0]])))
    assert counters(done)["file_uploaded"] == 1 and counters(done)["file_failed_to_upload"] == 1
    assert "larger than" in box.records()[ASSETS[0]]["links"][0]["error"]


def test_links_queued_while_the_job_is_held_wait_for_the_next_run(box: Box) -> None:
    patch(box.api, ASSETS[0], [link(box.url("paper.pdf"))])
    set_id = make_set(box.api, members=[ASSETS[0]])
    box.control("POST", "jobs", json={"hold": True})
    run = run_job(box.api, set_id)
    assert box.api.get(run.json()["additional_info"]["link"]).json()["status"]["value"] == "QUEUED"
    box.control("POST", "jobs", json={"hold": False})
    wait_job(box.api, run)
    patch(box.api, ASSETS[0], [link(box.url("data.csv"))])
    assert [k["status"] for k in box.records()[ASSETS[0]]["links"]] == ["extracted", "pending"]
    wait_job(box.api, run_job(box.api, set_id))
    assert [k["status"] for k in box.records()[ASSETS[0]]["links"]] == ["extracted", "extracted"]


def test_job_thresholds_running_and_per_hour(box: Box) -> None:
    set_id = make_set(box.api, members=[ASSETS[0]])
    box.control("POST", "jobs", json={"hold": True})
    runs = [run_job(box.api, set_id) for _ in range(3)]
    assert all(r.status_code == 200 for r in runs)
    assert_exl(run_job(box.api, set_id), 400, "402222", "Execution threshold reached.")
    box.control("POST", "jobs", json={"hold": False})
    for r in runs:
        wait_job(box.api, r)
    for _ in range(2):
        wait_job(box.api, run_job(box.api, set_id))
    assert_exl(run_job(box.api, set_id), 400, "402223", "Execution threshold reached.")  # 6th run in an hour
    box.clock.advance(3601)
    wait_job(box.api, run_job(box.api, set_id))
    assert box.stats()["job_runs"] == 6


def test_job_run_errors(box: Box) -> None:
    set_id = make_set(box.api)
    ok_body = {"parameter": [{"name": {"value": "set_id"}, "value": set_id}]}
    cases = [
        ("/almaws/v1/conf/jobs/bad-id", {"op": "run"}, ok_body, "402215", "Invalid job id format."),
        ("/almaws/v1/conf/jobs/M1", {"op": "run"}, ok_body, "402216", "Invalid job id."),
        (f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", {}, ok_body, "402220", "Operation was not provided."),
        (f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", {"op": "stop"}, ok_body, "402221", "Operation is not supported."),
        (f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", {"op": "run"}, {"parameter": []}, "402228", None),
        (f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", {"op": "run"},
         {"parameter": [{"name": {"value": "set_id"}, "value": ""}]}, "402229", "Mandatory parameter value is empty."),
        (f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", {"op": "run"},
         {"parameter": [{"name": {"value": "set_id"}, "value": "404"}]}, "60107", "Invalid set ID."),
    ]
    for path, params, body, code, message in cases:
        assert_exl(box.api.post(path, params=params, json=body), 400, code, message)
    assert_exl(box.api.get(f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}/instances/123"), 400, "GENERAL_ERROR")
    assert box.stats()["job_runs"] == 0


# ---- sets -------------------------------------------------------------------------------------


def test_set_creation_members_and_documented_errors(box: Box) -> None:
    set_id = make_set(box.api, "s1")
    got = box.api.get(f"/almaws/v1/conf/sets/{set_id}").json()
    assert got["content"] == {"value": "IER", "desc": "Research assets"} and got["number_of_members"]["value"] == 0
    base = {"type": {"value": "ITEMIZED"}, "content": {"value": "IER"}}
    assert_exl(box.api.post("/almaws/v1/conf/sets", json={"name": "s1", **base}), 400, "402263")
    assert_exl(box.api.post("/almaws/v1/conf/sets", json={"name": "s2", "type": {"value": "X"}}), 400, "402262")
    assert_exl(box.api.post("/almaws/v1/conf/sets", json=base), 400, "402119")
    url = f"/almaws/v1/conf/sets/{set_id}"

    def members(*ids: str, **params: str) -> httpx.Response:
        body = {"members": {"member": [{"id": i} for i in ids]}}
        return box.api.post(url, params={"op": "add_members", **params}, json=body)

    assert_exl(members(ASSETS[0], "nope"), 400, "60116", "A member ID is not valid for the content.")
    assert_exl(members(ASSETS[0], ASSETS[0]), 400, "60119")
    assert_exl(members(), 400, "60113")
    one = {"members": {"member": [{"id": ASSETS[0]}]}}
    assert_exl(box.api.post(url, params={"op": "bogus"}, json=one), 400, "60111")
    assert_exl(box.api.post("/almaws/v1/conf/sets/404", params={"op": "add_members"}, json={}), 400, "60107")
    assert members(ASSETS[0], "nope", fail_on_invalid_id="false").json()["number_of_members"]["value"] == 1
    assert_exl(members(ASSETS[0]), 400, "60115", "A member ID is already in the set.")
    r = box.api.post(url, params={"op": "delete_members"}, json=one)
    assert r.json()["number_of_members"]["value"] == 0


def test_set_members_paginate_with_limit_and_offset(box: Box) -> None:
    ids = [f"99{n:03d}0561" for n in range(25)]
    box.control("POST", "assets", json={"ids": ids})
    set_id = make_set(box.api, members=ids)
    seen, offset = [], 0
    while True:
        page = box.api.get(f"/almaws/v1/conf/sets/{set_id}/members", params={"limit": 10, "offset": offset}).json()
        assert page["total_record_count"] == 25
        seen += [m["id"] for m in page["member"]]
        offset += 10
        if offset >= page["total_record_count"]:
            break
    assert seen == ids
    bad = box.api.get(f"/almaws/v1/conf/sets/{set_id}/members", params={"limit": 101})
    assert_exl(bad, 400, "GENERAL_ERROR")


# ---- governance thresholds ----------------------------------------------------------------------


def test_per_second_threshold_429_and_remaining_header(start: Callable[..., Box]) -> None:
    box = start(per_second=3, daily=100)
    responses = [box.api.get(f"/esploro/v1/assets/{ASSETS[0]}") for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["X-Exl-Api-Remaining"] for r in responses] == ["99", "98", "97", "97", "97"]
    assert_exl(responses[3], 429, "PER_SECOND_THRESHOLD", PER_SECOND_MESSAGE)
    assert "Retry-After" not in responses[3].headers
    box.clock.advance(1)
    assert box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").status_code == 200
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["throttled"]) == (6, 4, 2)


def test_daily_threshold_429_until_midnight(start: Callable[..., Box]) -> None:
    box = start(daily=2)
    assert [box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").status_code for _ in range(2)] == [200, 200]
    r = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}")
    assert_exl(r, 429, "DAILY_THRESHOLD", DAILY_MESSAGE)
    assert r.headers["X-Exl-Api-Remaining"] == "0"
    assert_exl(patch(box.api, ASSETS[0], [link(box.url("paper.pdf"))]), 429, "DAILY_THRESHOLD")
    assert box.records()[ASSETS[0]]["links"] == []
    box.clock.advance(86_400)
    assert box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").status_code == 200


def test_limits_change_live_and_reset_restores_them(box: Box) -> None:
    r = box.control("POST", "limits", json={"per_second": 1, "daily": 50})
    assert r.json() == {"per_second": 1, "daily": 50, "max_running_jobs": 3, "job_runs_per_hour": 5}
    assert [box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").status_code for _ in range(2)] == [200, 429]
    for bad in ({"per_second": 0}, {"daily": -1}, {"unknown": 1}, {"per_second": True}):
        assert box.control("POST", "limits", json=bad).status_code == 400
    box.control("POST", "reset")
    assert box.control("POST", "limits", json={}).json()["per_second"] == 10_000


# ---- faults, control routes, reset --------------------------------------------------------------


def test_fault_before_stores_nothing_and_after_stores_but_answers_error(box: Box) -> None:
    box.control("POST", "faults", json={"status": 503, "count": 1, "route": "patch_asset", "retry_after": 2})
    r = patch(box.api, ASSETS[0], [link(box.url("paper.pdf"))])
    assert_exl(r, 503, "GENERAL_ERROR")
    assert r.headers["Retry-After"] == "2"
    assert box.records()[ASSETS[0]]["links"] == []
    box.control("POST", "faults", json={"status": 500, "count": 1, "route": "patch_asset", "when": "after"})
    assert_exl(patch(box.api, ASSETS[0], [link(box.url("paper.pdf"))]), 500, "GENERAL_ERROR")
    assert [k["status"] for k in box.records()[ASSETS[0]]["links"]] == ["pending"]  # stored despite the error
    box.control("POST", "faults", json={"status": 429, "count": 1})
    assert_exl(box.api.get(f"/esploro/v1/assets/{ASSETS[0]}"), 429, "PER_SECOND_THRESHOLD", PER_SECOND_MESSAGE)
    box.control("POST", "faults", json={"status": 502, "count": 1, "body": {"gateway": "down"}})
    r = box.api.get(f"/esploro/v1/assets/{ASSETS[0]}")
    assert (r.status_code, r.json()) == (502, {"gateway": "down"})
    box.control("POST", "faults", json={"status": 500, "route": "run_job", "when": "after"})
    set_id = make_set(box.api, members=[ASSETS[0]])
    assert_exl(run_job(box.api, set_id), 500, "GENERAL_ERROR")
    [job] = box.control("GET", "records").json()["jobs"]  # the job was started although the reply was lost
    assert box.stats()["job_runs"] == 1 and job["link"].endswith(job["id"])
    for bad in ({"status": 200}, {"status": 500, "when": "later"}, {"status": 500, "route": "nope"}):
        assert box.control("POST", "faults", json=bad).status_code == 400
    stats = box.stats()
    assert stats["throttled"] == 1 and stats["requests"] - stats["accepted"] == 3  # the 3 "before" faults


def test_control_assets_route_creates_research_assets(box: Box) -> None:
    r = box.control("POST", "assets", json={"ids": ["991777770561", ASSETS[0]], "title": "Thesis"})
    assert r.json() == {"created": ["991777770561"], "existing": [ASSETS[0]]}
    record = box.api.get("/esploro/v1/assets/991777770561").json()["records"][0]
    assert record["title"] == "Thesis"
    for bad in ({"ids": []}, {"ids": ["a,b"]}, {"ids": "x"}, {}):
        assert box.control("POST", "assets", json=bad).status_code == 400
    assert box.stats()["assets"] == len(ASSETS) + 1


def test_reset_clears_everything_and_restores_demo_assets(box: Box) -> None:
    box.control("POST", "assets", json={"ids": ["991777770561"]})
    patch(box.api, ASSETS[0], [link(box.url("paper.pdf"))])
    make_set(box.api, members=[ASSETS[0]])
    box.control("POST", "faults", json={"status": 500, "count": 5})
    stats = box.control("POST", "reset").json()
    assert (stats["requests"], stats["assets"], stats["sets"], stats["links_queued"]) == (0, len(ASSETS), 0, 0)
    assert set(stats["by_route"].values()) == {0}
    assert box.api.get(f"/esploro/v1/assets/{ASSETS[0]}").json()["records"][0]["temporary"] == {}
    assert_exl(box.api.get("/esploro/v1/assets/991777770561"), 400, "402203")
    assert box.control("GET", "records").json()["sets"] == []


def test_demo_job_serves_its_staging_folder_and_names_the_demo_manifest() -> None:
    import csv
    from pathlib import Path

    from assetferry.sandbox import esploro

    demo_dir = Path(esploro.__file__).parent / "demo"
    with ExitStack() as stack:
        job, env = esploro.demo_job("http://127.0.0.1:1", demo_dir, stack)
        settings = job["destination"]["settings"]
        stage = Path(settings["staging"].removeprefix("file://"))
        (stage / "x.txt").write_bytes(b"hello")
        assert httpx.get(f"{settings['public_base_url']}/x.txt").content == b"hello"  # what Esploro fetches
    assert not stage.exists()  # removed with the demo
    with open(job["source"]["url"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and {r["parent"] for r in rows} == set(ASSETS)
    assert all((demo_dir / r["file"]).is_file() for r in rows)
    assert env == {"ASSETFERRY_DEMO_KEY": DEMO_API_KEY}
    assert job["destination"]["credentials"]["api_key"] == "env:ASSETFERRY_DEMO_KEY"
