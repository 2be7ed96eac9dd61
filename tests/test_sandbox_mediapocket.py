"""Tests for the Media Pocket DAM simulator, driven over real sockets (the simulator really downloads media)."""

import hashlib
import os
import re
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

from assetferry.sandbox.mediapocket import DEMO_API_KEY, DEMO_PROJECT_ID, OWNER_EMAIL, create_app
from assetferry.sandbox.server import banner, running
from tests.sandbox_kit import FakeClock, SandboxBox, simulator_fixtures

AUTH = {"X-API-KEY": DEMO_API_KEY}
ASSET_KEYS = {
    "id", "external_id", "parent_id", "project_id", "owner", "title", "description", "category", "tags",
    "ai_tags", "status", "media_type", "original_filename", "drop_folder_id", "md5_sum", "created_date",
    "modification_date", "deleted",
}
SAMPLE = {
    "title": "Sample Asset",
    "description": "Sample asset from API V2",
    "category": "Sample",
    "tags": ["sample", "test"],
}
CREATED_FAILED = re.compile(r"^Asset ([A-Za-z0-9_-]{20}) created, adding media to asset failed: (.+)$")



@dataclass
class Box(SandboxBox):
    """The simulator under test (see tests/sandbox_kit.py)."""

    def put_object(self, key: str, data: bytes) -> str:
        """Store bytes in the sandbox bucket; returns an http URL serving them."""
        assert self.control("PUT", f"s3/{key}", content=data).status_code == 200
        return f"{self.root}/_sandbox/s3/{key}"


def launch(stack: ExitStack, **kwargs: Any) -> Box:
    clock = FakeClock()
    root = stack.enter_context(running(create_app(clock=clock, **kwargs)))
    api = stack.enter_context(httpx.Client(base_url=f"{root}/api/v2", headers=AUTH, timeout=10))
    return Box(api=api, root=root, clock=clock)


start, shared, box = simulator_fixtures(launch)


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[str, dict[str, bytes]]]:
    """An unrelated HTTP file server (like S3 behind a presigned URL): GET /files/<name>, 404 if absent."""
    files: dict[str, bytes] = {}

    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        return Response(files[name]) if name in files else Response(b"nope", status_code=404)

    with running(Starlette(routes=[Route("/files/{name}", serve)])) as root:
        yield root, files


def post(box: Box, project: str = DEMO_PROJECT_ID, **body: Any) -> httpx.Response:
    """POST /projects/<project>/assets with SAMPLE plus `body`."""
    return box.api.post(f"projects/{project}/assets", json={**SAMPLE, **body})


def create(box: Box, project: str = DEMO_PROJECT_ID, **body: Any) -> dict[str, Any]:
    r = post(box, project, **body)
    assert r.status_code == 200, r.text
    return dict(r.json()["asset"])


def assert_error(r: httpx.Response, status: int, message: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    if message is not None:
        assert body["error"] == message
    return str(body["error"])


# ---- auth -------------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_key_is_not_echoed(box: Box) -> None:
    url = f"{box.root}/api/v2/projects/{DEMO_PROJECT_ID}/assets"
    for headers in ({}, {"X-API-KEY": "wrong-secret-123"}, {"Authorization": f"Bearer {DEMO_API_KEY}"}):
        r = httpx.post(url, json=SAMPLE, headers=headers)
        assert_error(r, 401, "Unauthorized")
        assert "wrong-secret-123" not in r.text and DEMO_API_KEY not in r.text
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["by_route"]["create"], stats["assets"]) == (3, 0, 3, 0)


def test_owner_is_the_key_owner(start: Callable[..., Box]) -> None:
    box = start(api_keys={"k1": "alice@example.com", "k2": "bob@example.com"})
    r = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json=SAMPLE, headers={"X-API-KEY": "k2"})
    assert r.json()["asset"]["owner"] == "bob@example.com"
    assert box.api.get(f"assets/{r.json()['asset']['id']}").status_code == 401  # DEMO key not configured here


# ---- create -----------------------------------------------------------------------------------


def test_create_without_media_matches_doc_example(box: Box) -> None:
    asset = create(box)
    assert set(asset) == ASSET_KEYS
    assert re.fullmatch(r"[A-Za-z0-9_-]{20}", asset["id"])
    assert asset["project_id"] == DEMO_PROJECT_ID and asset["owner"] == OWNER_EMAIL
    assert (asset["title"], asset["description"]) == ("Sample Asset", "Sample asset from API V2")
    assert asset["category"] == "sample"  # lower-cased
    assert asset["tags"] == ["sample", "test"] and asset["ai_tags"] == []
    assert (asset["status"], asset["media_type"]) == ("open", "placeholder")
    assert asset["external_id"] is asset["parent_id"] is asset["original_filename"] is asset["md5_sum"] is None
    assert asset["drop_folder_id"] is None and asset["deleted"] is None
    for key in ("created_date", "modification_date"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", asset[key])
    assert box.api.get(f"assets/{asset['id']}").json() == {"asset": asset}


def test_minimal_create_and_article(box: Box) -> None:
    r = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json={"title": "Only title"})
    asset = r.json()["asset"]
    assert (asset["description"], asset["category"], asset["tags"]) == (None, None, [])
    assert create(box, media_type="article")["media_type"] == "article"


def test_create_is_not_idempotent(box: Box) -> None:
    first, second = create(box), create(box)
    assert first["id"] != second["id"]
    records = box.records()
    assert [r["id"] for r in records] == [first["id"], second["id"]]
    assert {r["title"] for r in records} == {"Sample Asset"} and box.stats()["assets"] == 2


def test_duplicate_external_id_is_400_and_not_stored(box: Box) -> None:
    box.control("POST", "projects", json={"id": "other-project"})
    create(box, external_id="row-1")
    dup = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json={**SAMPLE, "external_id": "row-1"})
    assert_error(dup, 400, "External id has already been taken")
    dup = box.api.post("projects/other-project/assets", json={**SAMPLE, "external_id": "row-1"})
    assert_error(dup, 400, "External id has already been taken")  # unique across projects
    create(box, external_id="row-2")
    assert [r["external_id"] for r in box.records()] == ["row-1", "row-2"]


def test_unknown_project_is_404_before_param_checks(box: Box) -> None:
    assert_error(box.api.post("projects/not-found-id/assets", json={}), 404, "project not found")
    assert_error(box.api.post("projects/not-found-id/assets", json=SAMPLE), 404, "project not found")
    assert box.stats()["assets"] == 0


def test_param_errors_are_422_with_apipie_texts(box: Box) -> None:
    url = f"projects/{DEMO_PROJECT_ID}/assets"
    no_title = {k: v for k, v in SAMPLE.items() if k != "title"}
    cases = [
        (no_title, "Missing parameter title"),
        (
            {**SAMPLE, "media_type": "image"},
            "Invalid parameter 'media_type' value \"image\": Must be one of: <code>article</code>.",
        ),
        ({**SAMPLE, "title": None}, "Missing parameter title"),
        ({**SAMPLE, "title": 12}, "Invalid parameter 'title' value 12: Must be a String"),
        ({**SAMPLE, "tags": "a,b"}, "Invalid parameter 'tags' value \"a,b\": Must be an array of String"),
        ({**SAMPLE, "tags": ["a", 1]}, "Invalid parameter 'tags' value [\"a\", 1]: Must be an array of String"),
        ({**SAMPLE, "description": None}, "Missing parameter description"),
        ({**SAMPLE, "url": "http://x/y.jpg"}, "Invalid parameter 'url' value \"http://x/y.jpg\": Must be a Hash"),
        ({**SAMPLE, "url": {"file_url": "http://x/y.jpg"}}, "Missing parameter filename"),
        ({**SAMPLE, "s3": {"filename": "y.jpg"}}, "Missing parameter s3_key"),
    ]
    for body, message in cases:
        assert_error(box.api.post(url, json=body), 422, message)
    # The doc requires Content-Type: application/json; without it Rails sees no params.
    r = box.api.post(url, content=b'{"title": "x"}', headers={"Content-Type": "text/plain"})
    assert_error(r, 422, "Missing parameter title")
    assert_error(box.api.post(url, content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    assert box.stats()["assets"] == 0


def test_model_errors_are_400(box: Box) -> None:
    url = f"projects/{DEMO_PROJECT_ID}/assets"
    assert_error(box.api.post(url, json={"title": "x" * 256}), 400, "Title is too long (maximum is 255 characters)")
    assert_error(box.api.post(url, json={"title": "  "}), 400, "Title can't be blank")
    assert create(box, title="x" * 255)["title"] == "x" * 255
    assert box.stats()["assets"] == 1


# ---- media ------------------------------------------------------------------------------------


def test_create_with_url_downloads_bytes_and_processes(box: Box, origin: tuple[str, dict[str, bytes]]) -> None:
    root, files = origin
    data = os.urandom(200_000)
    files["photo.jpg"] = data
    presigned = f"{root}/files/photo.jpg?X-Amz-Signature=s"
    asset = create(box, external_id="p1", url={"file_url": presigned, "filename": "photo.jpg"})
    assert (asset["media_type"], asset["original_filename"], asset["md5_sum"]) == ("processing", "photo.jpg", None)
    assert box.api.get(f"assets/{asset['id']}").json()["asset"]["media_type"] == "processing"
    box.clock.advance(1.0)  # default processing_seconds
    done = box.api.get(f"assets/{asset['id']}").json()["asset"]
    assert (done["media_type"], done["md5_sum"], done["ai_tags"]) == ("image", hashlib.md5(data).hexdigest(), ["image"])
    media = box.records()[0]["media"]
    assert media["md5"] == hashlib.md5(data).hexdigest() and media["size"] == len(data)
    assert media["filename"] == "photo.jpg" and media["source"] == {"file_url": f"{root}/files/photo.jpg"}
    stats = box.stats()
    assert (stats["media_fetches"], stats["bytes_fetched"], stats["media_attached"]) == (1, len(data), 1)


def test_invalid_url_creates_asset_without_media(box: Box) -> None:
    body = {**SAMPLE, "url": {"file_url": "/local/downloads/myfile.jpg", "filename": "jpgfile.jpg"}}
    r = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json=body)
    match = CREATED_FAILED.match(assert_error(r, 400))
    assert match and match.group(2) == "not a valid HTTP URL"
    asset = box.api.get(f"assets/{match.group(1)}").json()["asset"]
    assert asset["media_type"] == "placeholder" and asset["original_filename"] is None
    assert [(x["id"], x["media"]) for x in box.records()] == [(match.group(1), None)]
    assert box.stats()["media_fetches"] == 0


def test_unfetchable_url_creates_asset_without_media(box: Box, origin: tuple[str, dict[str, bytes]]) -> None:
    root, _ = origin
    for file_url in (f"{root}/files/missing.jpg", "http://127.0.0.1:9/closed.jpg"):
        r = post(box, url={"file_url": file_url, "filename": "a.jpg"})
        match = CREATED_FAILED.match(assert_error(r, 400))
        assert match and "could not be downloaded" in match.group(2) and file_url not in r.text
    assert [x["media"] for x in box.records()] == [None, None]
    assert (box.stats()["media_fetches"], box.stats()["media_failures"]) == (2, 2)
    # retrying without external_id duplicates; with it the second try is refused
    assert CREATED_FAILED.match(assert_error(post(box, external_id="e", url={"file_url": "x", "filename": "a"}), 400))
    r = post(box, external_id="e", url={"file_url": "x", "filename": "a"})
    assert_error(r, 400, "External id has already been taken")
    assert len(box.records()) == 3


def test_forced_media_failures(box: Box) -> None:
    url = box.put_object("docs/a.pdf", b"%PDF-1.4 sandbox")
    assert box.control("POST", "media_failures", json={"count": 1, "message": "timeout"}).json() == {"pending": 1}
    body = {**SAMPLE, "url": {"file_url": url, "filename": "a.pdf"}}
    r = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json=body)
    match = CREATED_FAILED.match(assert_error(r, 400))
    assert match and match.group(2) == "timeout"
    ok = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json=body).json()["asset"]
    assert ok["original_filename"] == "a.pdf"
    assert [x["media"] is None for x in box.records()] == [True, False]
    assert box.stats()["media_fetches"] == 1  # the forced failure downloaded nothing
    assert box.control("POST", "media_failures", json={"count": 0}).status_code == 400


def test_create_with_s3_key(box: Box) -> None:
    box.put_object("uploads/clip.mp4", b"\x00\x00\x00\x18ftypmp42")
    asset = create(box, s3={"s3_key": "uploads/clip.mp4", "filename": "clip.mp4"})
    box.clock.advance(5)
    assert box.api.get(f"assets/{asset['id']}").json()["asset"]["media_type"] == "video"
    assert box.records()[0]["media"]["source"] == {"s3_key": "uploads/clip.mp4"}
    r = post(box, s3={"s3_key": "nope", "filename": "x.mp4"})
    assert CREATED_FAILED.match(assert_error(r, 400))
    assert len(box.records()) == 2


def test_s3_base_url_fetches_over_http(start: Callable[..., Box], origin: tuple[str, dict[str, bytes]]) -> None:
    root, files = origin
    files["song.mp3"] = b"ID3 sandbox"
    box = start(s3_base_url=f"{root}/files", processing_seconds=0)
    asset = create(box, s3={"s3_key": "song.mp3", "filename": "song.mp3"})
    assert asset["media_type"] == "audio" and asset["md5_sum"] == hashlib.md5(b"ID3 sandbox").hexdigest()


def test_add_replace_list_download_and_remove_media(box: Box) -> None:
    asset_id = create(box)["id"]
    url = box.put_object("a.png", b"first")
    assert box.api.post(f"assets/{asset_id}/media", json={"file_url": url, "filename": "a.png"}).json() == {"ok": "ok"}
    url2 = box.put_object("b.pdf", b"second version")
    assert box.api.post(f"assets/{asset_id}/media", json={"file_url": url2, "filename": "b.pdf"}).json() == {"ok": "ok"}
    media = box.api.get(f"assets/{asset_id}/media").json()["media"]
    assert len(media) == 1 and media[0]["filename"] == "b.pdf" and media[0]["status"] == "processing"
    box.clock.advance(1)
    entry = box.api.get(f"assets/{asset_id}/media").json()["media"][0]
    assert entry["md5_sum"] == hashlib.md5(b"second version").hexdigest() and entry["size"] == 14
    link = box.api.get(f"assets/{asset_id}/media/{entry['id']}/download_url").json()["download_url"]
    assert link == entry["download_url"] and httpx.get(link).content == b"second version"
    assert_error(box.api.get(f"assets/{asset_id}/media/nope/download_url"), 404, "media not found")
    assert box.api.get(f"assets/{asset_id}").json()["asset"]["media_type"] == "document"
    removed = box.api.delete(f"assets/{asset_id}/media").json()
    assert set(removed) == {"asset"} and removed["asset"]["media_type"] == "placeholder"
    assert removed["asset"]["md5_sum"] is None and removed["asset"]["original_filename"] is None
    again = box.api.delete(f"assets/{asset_id}/media")
    assert again.status_code == 200
    assert again.json()["errors"] == {"error": "No media found on this asset.", "status": 400}
    assert box.api.get(f"assets/{asset_id}/media").json() == {"media": []}
    assert httpx.get(link).status_code == 404


def test_add_media_errors(box: Box) -> None:
    asset_id = create(box)["id"]
    bad = {"file_url": "/local/downloads/myfile.jpg", "filename": "myfile.jpg"}
    assert_error(box.api.post(f"assets/{asset_id}/media", json=bad), 400, "not a valid HTTP URL")
    r = box.api.post(f"assets/{asset_id}/media", json={"filename": "a.jpg"})
    assert_error(r, 422, "Missing parameter file_url")
    r = box.api.post("assets/not-found-id/media", json={"file_url": "http://x/a", "filename": "a"})
    assert_error(r, 404, "asset not found")
    assert box.records()[0]["media"] is None


# ---- get / update / trash ----------------------------------------------------------------------


def test_get_unknown_asset_is_404(box: Box) -> None:
    assert_error(box.api.get("assets/not-found-id"), 404, "asset not found")
    assert_error(box.api.put("assets/not-found-id", json={"title": "x"}), 404, "asset not found")


def test_update_is_partial(box: Box) -> None:
    asset = create(box, external_id="u1")
    create(box, external_id="u2")
    r = box.api.put(f"assets/{asset['id']}", json={"title": "New", "category": "Photos"})
    updated = r.json()["asset"]
    assert (updated["title"], updated["category"], updated["description"]) == ("New", "photos", SAMPLE["description"])
    assert updated["tags"] == SAMPLE["tags"] and updated["external_id"] == "u1" and updated["id"] == asset["id"]
    assert box.api.put(f"assets/{asset['id']}", json={"external_id": "u1"}).status_code == 200  # its own id
    r = box.api.put(f"assets/{asset['id']}", json={"external_id": "u2"})
    assert_error(r, 400, "External id has already been taken")
    assert_error(box.api.put(f"assets/{asset['id']}", json={"tags": "x"}), 422)
    assert_error(box.api.put(f"assets/{asset['id']}", json={"title": "x" * 300}), 400)
    record = box.records()[0]
    assert (record["title"], record["category"], record["external_id"]) == ("New", "photos", "u1")


def test_trash_restore_and_purge(box: Box) -> None:
    asset = create(box, external_id="t1")
    trashed = box.api.post(f"assets/{asset['id']}/trash_bin").json()["asset"]
    assert trashed["deleted"] is not None
    assert box.api.get(f"assets/{asset['id']}").json()["asset"]["deleted"] == trashed["deleted"]
    assert_error(box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json={**SAMPLE, "external_id": "t1"}), 400)
    assert box.api.post(f"assets/{asset['id']}/restore").json()["asset"]["deleted"] is None
    box.api.post(f"assets/{asset['id']}/trash_bin")
    box.clock.advance(14 * 24 * 3600)
    assert_error(box.api.get(f"assets/{asset['id']}"), 404, "asset not found")
    assert box.records() == [] and create(box, external_id="t1")["external_id"] == "t1"


def test_create_unfiled_asset(box: Box) -> None:
    r = box.api.post("assets", json={**SAMPLE, "url": {"file_url": "/nope", "filename": "x"}})
    asset = r.json()["asset"]
    assert r.status_code == 200 and asset["project_id"] is None and asset["media_type"] == "placeholder"
    assert_error(box.api.post("assets", json={"media_type": "image"}), 422, "Missing parameter title")


# ---- control routes ----------------------------------------------------------------------------


def test_projects_control_route_and_reset(box: Box) -> None:
    r = box.control("POST", "projects", json={"id": "M3v-xrSG70BGtqli0xy7"})
    assert r.json() == {"project": {"id": "M3v-xrSG70BGtqli0xy7"}, "created": True}
    assert box.control("POST", "projects", json={"id": "M3v-xrSG70BGtqli0xy7"}).json()["created"] is False
    generated = box.control("POST", "projects", json={}).json()["project"]["id"]
    assert create(box, project=generated)["project_id"] == generated
    assert box.control("POST", "projects", json={"id": "bad id!"}).status_code == 400
    box.control("POST", "reset")
    assert box.control("GET", "records").json() == {"records": [], "projects": [DEMO_PROJECT_ID]}
    assert_error(box.api.post(f"projects/{generated}/assets", json=SAMPLE), 404, "project not found")


def test_fault_before_stores_nothing(box: Box) -> None:
    fault = {"status": 503, "count": 1, "retry_after": 3, "route": "create"}
    assert box.control("POST", "faults", json=fault).status_code == 200
    assert box.api.get("assets/x").status_code == 404  # other routes untouched
    r = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json=SAMPLE)
    assert_error(r, 503)
    assert r.headers["Retry-After"] == "3"
    assert box.records() == []
    create(box)
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["assets"]) == (3, 2, 1)


def test_fault_after_stores_then_answers_error(box: Box) -> None:
    url = box.put_object("a.jpg", b"jpeg bytes")
    fault = {"status": 502, "count": 1, "route": "create", "when": "after", "body": {"error": "Bad Gateway"}}
    box.control("POST", "faults", json=fault)
    r = post(box, external_id="x1", url={"file_url": url, "filename": "a.jpg"})
    assert r.status_code == 502 and r.json() == {"error": "Bad Gateway"}
    records = box.records()
    assert len(records) == 1 and records[0]["external_id"] == "x1" and records[0]["media"]["size"] == 10
    retry = box.api.post(f"projects/{DEMO_PROJECT_ID}/assets", json={**SAMPLE, "external_id": "x1"})
    assert_error(retry, 400, "External id has already been taken")
    box.control("POST", "faults", json={"status": 429, "count": 2})
    assert [box.api.get("assets/x").status_code for _ in range(3)] == [429, 429, 404]
    assert box.stats()["throttled"] == 2
    for bad in ({"status": 200}, {"status": 500, "when": "later"}, {"status": 500, "route": "nope"}):
        assert box.control("POST", "faults", json=bad).status_code == 400


def test_optional_rate_limit(start: Callable[..., Box]) -> None:
    box = start(per_second=2)
    codes = [box.api.get("assets/x") for _ in range(3)]
    assert [r.status_code for r in codes] == [404, 404, 429]
    assert_error(codes[2], 429, "Rate limit exceeded")
    assert codes[2].headers["Retry-After"] == "1"
    box.clock.advance(1)
    assert box.api.get("assets/x").status_code == 404
    assert box.control("POST", "limits", json={"per_second": None, "per_minute": 1}).json()["per_minute"] == 1
    box.clock.advance(60)
    assert [box.api.get("assets/x").status_code for _ in range(2)] == [404, 429]
    assert box.control("POST", "limits", json={"processing_seconds": -1}).status_code == 400


def test_limits_processing_seconds_and_reset_restores(box: Box) -> None:
    assert box.control("POST", "limits", json={"processing_seconds": 0}).json()["processing_seconds"] == 0
    asset = create(box, url={"file_url": box.put_object("x.gif", b"GIF89a"), "filename": "x.gif"})
    assert asset["media_type"] == "image" and asset["md5_sum"] == hashlib.md5(b"GIF89a").hexdigest()
    box.control("POST", "faults", json={"status": 500, "count": 5})
    box.control("POST", "media_failures", json={"count": 5})
    stats = box.control("POST", "reset").json()
    assert stats["assets"] == 0 and stats["requests"] == 0 and set(stats["by_route"].values()) == {0}
    asset = create(box, url={"file_url": box.put_object("y.gif", b"GIF89a"), "filename": "y.gif"})
    assert asset["media_type"] == "processing"  # processing_seconds back to 1.0


def test_stats_by_route(box: Box) -> None:
    asset_id = create(box)["id"]
    box.api.post("assets", json=SAMPLE)
    box.api.get(f"assets/{asset_id}")
    box.api.put(f"assets/{asset_id}", json={"title": "t"})
    box.api.post(f"assets/{asset_id}/media", json={"file_url": "bad", "filename": "a"})
    box.api.get(f"assets/{asset_id}/media")
    box.api.get(f"assets/{asset_id}/media/m/download_url")
    box.api.delete(f"assets/{asset_id}/media")
    box.api.post(f"assets/{asset_id}/trash_bin")
    box.api.post(f"assets/{asset_id}/restore")
    stats = box.stats()
    assert set(stats["by_route"].values()) == {1} and stats["requests"] == stats["accepted"] == 10
    assert (stats["assets"], stats["media_failures"]) == (2, 1)


def test_unknown_route_or_method_is_json_404(box: Box) -> None:
    assert_error(box.api.get("nothing-here"), 404, "Not found")
    assert_error(box.api.patch("assets/x"), 404, "Not found")


def test_banner_names_base_url_and_demo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from assetferry.sandbox import mediapocket, server

    monkeypatch.setitem(server.SIMULATORS, "mediapocket", mediapocket.create_app)  # registering is the lead's job
    line = banner("mediapocket", "http://127.0.0.1:8799")
    assert "base_url=http://127.0.0.1:8799/api/v2" in line and DEMO_API_KEY in line and DEMO_PROJECT_ID in line


def test_demo_job_creates_the_second_project_and_serves_staged_files(box: Box) -> None:
    import csv
    from pathlib import Path

    from assetferry.sandbox.mediapocket import DEMO_CATALOG_PROJECT_ID, demo_job

    demo_dir = Path(__file__).resolve().parent.parent / "sandbox" / "demo"
    with ExitStack() as stack:
        job, env = demo_job(box.root, demo_dir, stack)
        settings = job["destination"]["settings"]
        assert env == {"ASSETFERRY_DEMO_KEY": DEMO_API_KEY}
        assert job["destination"]["url"] == f"{box.root}/api/v2"
        assert set(box.control("GET", "records").json()["projects"]) == {DEMO_PROJECT_ID, DEMO_CATALOG_PROJECT_ID}
        staging = Path(settings["staging"].removeprefix("file://"))
        (staging / "fp").mkdir()
        (staging / "fp" / "a.png").write_bytes(b"staged")
        assert httpx.get(f"{settings['public_base_url']}/fp/a.png").content == b"staged"  # what the vendor fetches
    assert not staging.exists()  # gone with the demo
    with (demo_dir / "mediapocket.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and {r["parent"] for r in rows} == {"", DEMO_CATALOG_PROJECT_ID}
    assert all((demo_dir / r["file"]).is_file() for r in rows)
