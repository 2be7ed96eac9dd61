"""Tests for the Kontent.ai asset simulator, driven over a real socket (plus one ASGI-level test)."""

import asyncio
import hashlib
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from assetferry.sandbox.kontent import DEMO_API_KEY, DEMO_ENVIRONMENT_ID, ZERO_ID, EnvConfig, create_app, reference_id
from assetferry.sandbox.server import banner, running
from tests.sandbox_kit import FakeClock, SandboxBox, simulator_fixtures

ENV = DEMO_ENVIRONMENT_ID
AUTH = {"Authorization": f"Bearer {DEMO_API_KEY}"}
RATE_MESSAGE = "API rate limit exceeded. Please retry your request later."



@dataclass
class Box(SandboxBox):
    """The simulator under test (see tests/sandbox_kit.py)."""



def launch(stack: ExitStack, **kwargs: Any) -> Box:
    """Serve a fresh simulator on a real socket (huge rate limits unless given) until `stack` closes."""
    clock = FakeClock()
    kwargs.setdefault("per_second", 10_000)
    kwargs.setdefault("per_minute", 100_000)
    root = stack.enter_context(running(create_app(clock=clock, **kwargs)))
    api = stack.enter_context(httpx.Client(base_url=f"{root}/v2/projects/{ENV}", headers=AUTH, timeout=5))
    return Box(api=api, root=root, clock=clock)


start, shared, box = simulator_fixtures(launch)


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG signature + IHDR chunk (enough for dimension sniffing) followed by `extra`."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + extra


def upload(api: httpx.Client, data: bytes, name: str = "photo.png", content_type: str = "image/png") -> str:
    r = api.post(f"files/{quote(name, safe='')}", content=data, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "internal"
    return str(r.json()["id"])


def add(api: httpx.Client, file_id: str, **body: Any) -> dict[str, Any]:
    r = api.post("assets", json={"file_reference": {"id": file_id, "type": "internal"}, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def assert_kontent_error(r: httpx.Response, status: int, error_code: int | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert isinstance(body["error_code"], int) and isinstance(body["message"], str)
    if error_code is not None:
        assert body["error_code"] == error_code
    return dict(body)


# ---- auth -------------------------------------------------------------------------------


def test_missing_malformed_or_wrong_key_is_401_and_not_admitted(box: Box) -> None:
    for headers in ({}, {"Authorization": DEMO_API_KEY}, {"Authorization": "Bearer nope"}):
        r = httpx.get(f"{box.root}/v2/projects/{ENV}/assets", headers=headers)
        assert_kontent_error(r, 401)
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["by_route"]["list"]) == (3, 0, 3)


def test_key_of_another_environment_or_unknown_environment_is_403(start: Callable[..., Box]) -> None:
    other = "11111111-2222-3333-4444-555555555555"
    box = start(environments={ENV: EnvConfig(DEMO_API_KEY), other: EnvConfig("other-key")})
    r = httpx.get(f"{box.root}/v2/projects/{ENV}/assets", headers={"Authorization": "Bearer other-key"})
    assert_kontent_error(r, 403)
    assert_kontent_error(box.api.get(f"{box.root}/v2/projects/{ZERO_ID}/assets"), 403)
    assert box.api.get("assets").status_code == 200


def test_expired_key_is_401(start: Callable[..., Box]) -> None:
    box = start(environments={ENV: EnvConfig("new-key", expired_keys=[DEMO_API_KEY])})
    assert "expired" in assert_kontent_error(box.api.get("assets"), 401)["message"]


# ---- upload + create + get --------------------------------------------------------------


def test_upload_create_and_get_by_id_codename_and_external_id(box: Box) -> None:
    data = png(1280, 548, b"x" * 100)
    file_id = upload(box.api, data)
    created = add(
        box.api,
        file_id,
        title="Coffee Brewing Techniques",
        external_id="ext id#42",
        descriptions=[{"language": {"codename": "en-US"}, "description": "alt"}],
    )
    assert created["codename"] == "coffee_brewing_techniques"
    assert created["file_name"] == "photo.png" and created["type"] == "image/png"
    assert (created["size"], created["image_width"], created["image_height"]) == (len(data), 1280, 548)
    assert created["file_reference"] == {"id": file_id, "type": "internal"}
    assert created["descriptions"] == [{"language": {"id": reference_id("language", "en-US")}, "description": "alt"}]
    assert created["folder"] == {"id": ZERO_ID} and created["collection"] == {"reference": None}
    assert created["elements"] == [] and created["external_id"] == "ext id#42"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", created["last_modified"])
    for identifier in (created["id"], "codename/coffee_brewing_techniques", "external-id/ext%20id%2342"):
        r = box.api.get(f"assets/{identifier}")
        assert r.status_code == 200, identifier
        assert r.json() == created


def test_defaults_codename_from_file_name_and_omits_unset_external_id(box: Box) -> None:
    first = add(box.api, upload(box.api, b"%PDF-1.4", "2024 report.pdf", "application/pdf"))
    second = add(box.api, upload(box.api, b"%PDF-1.4", "2024 report.pdf", "application/pdf"), title="")
    assert first["title"] is None and "external_id" not in first
    assert first["image_width"] is None and first["image_height"] is None
    assert (first["codename"], second["codename"]) == ("n2024_report_pdf", "n2024_report_pdf_2")


def test_duplicate_external_id_is_400(box: Box) -> None:
    add(box.api, upload(box.api, png(1, 1)), external_id="dup")
    r = box.api.post("assets", json={"file_reference": {"id": upload(box.api, png(1, 1))}, "external_id": "dup"})
    assert "dup" in assert_kontent_error(r, 400)["validation_errors"][0]["message"]


def test_create_requires_known_file_reference(box: Box) -> None:
    assert assert_kontent_error(box.api.post("assets", json={"title": "t"}), 400)["validation_errors"]
    r = box.api.post("assets", json={"file_reference": {"id": ZERO_ID, "type": "internal"}})
    assert_kontent_error(r, 400)
    assert box.stats()["assets"] == 0


# ---- upsert ----------------------------------------------------------------------------


def test_upsert_creates_via_external_id_then_updates(box: Box) -> None:
    file_id = upload(box.api, png(2, 2))
    assert_kontent_error(box.api.put("assets/external-id/brew", json={"title": "no file"}), 400)
    body = {"file_reference": {"id": file_id, "type": "internal"}, "title": "Brew"}
    r = box.api.put("assets/external-id/brew", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["external_id"] == "brew" and created["codename"] == "brew"
    new_file = upload(box.api, b"plain", "notes.txt", "text/plain")
    update = {
        "title": "Brewing",
        "descriptions": [{"language": {"id": ZERO_ID}, "description": "d"}],
        "file_reference": {"id": new_file, "type": "internal"},
        "collection": {"reference": {"codename": "default"}},
    }
    r = box.api.put("assets/external-id/brew", json=update)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["id"] == created["id"] and updated["title"] == "Brewing"
    assert updated["codename"] == "brew"  # untouched fields stay
    assert updated["file_name"] == "notes.txt" and updated["image_width"] is None
    assert updated["collection"] == {"reference": {"id": ZERO_ID}}
    assert box.api.put(f"assets/{created['id']}", json={"title": "By id"}).json()["title"] == "By id"
    # the swapped-out file is free again
    assert add(box.api, file_id)["file_reference"]["id"] == file_id
    assert_kontent_error(box.api.put(f"assets/{created['id']}", json={"collection": None}), 400)
    assert_kontent_error(box.api.put(f"assets/{created['id']}", json={"collection": {"reference": None}}), 400)


def test_upsert_by_uuid_or_codename_of_missing_asset_is_404_105(box: Box) -> None:
    missing = "fcbb12e6-66a3-4672-85d9-d502d16b8d9c"
    file_ref = {"file_reference": {"id": upload(box.api, png(1, 1)), "type": "internal"}}
    body = assert_kontent_error(box.api.put(f"assets/{missing}", json=file_ref), 404, 105)
    assert body["message"] == f"The requested asset '{missing}' was not found."
    body = assert_kontent_error(box.api.put("assets/codename/nope", json=file_ref), 404, 105)
    assert body["message"] == "The requested asset 'nope' was not found."
    assert box.stats()["assets"] == 0


# ---- rules and validation -----------------------------------------------------------------


def test_one_file_backs_only_one_asset(box: Box) -> None:
    file_id = upload(box.api, png(1, 1))
    first = add(box.api, file_id)
    r = box.api.post("assets", json={"file_reference": {"id": file_id, "type": "internal"}})
    assert "single asset" in assert_kontent_error(r, 400)["validation_errors"][0]["message"]
    other = add(box.api, upload(box.api, png(1, 1)))
    r = box.api.put(f"assets/{other['id']}", json={"file_reference": {"id": file_id, "type": "internal"}})
    assert_kontent_error(r, 400)
    assert box.api.delete(f"assets/{first['id']}").status_code == 204
    assert add(box.api, file_id)["file_reference"]["id"] == file_id  # freed by the delete


def test_unknown_language_folder_or_collection_is_400_with_validation_errors(start: Callable[..., Box]) -> None:
    box = start(environments={ENV: EnvConfig(DEMO_API_KEY, ["default", "en-US"], folders=["photos"])})
    file_id = upload(box.api, png(1, 1))
    ref = {"id": file_id, "type": "internal"}
    bad_bodies = [
        {"descriptions": [{"language": {"codename": "fr-FR"}, "description": "x"}]},
        {"descriptions": [{"language": {"external_id": "en-US"}, "description": "x"}]},
        {"folder": {"codename": "videos"}},
        {"collection": {"reference": {"codename": "nope"}}},
        {"elements": "nope"},
    ]
    for body in bad_bodies:
        r = box.api.post("assets", json={"file_reference": ref, **body})
        errors = assert_kontent_error(r, 400)["validation_errors"]
        assert errors and all(isinstance(e["message"], str) for e in errors), body
    descriptions = [{"language": {"codename": "en-US"}, "description": "y"}]
    asset = add(box.api, file_id, folder={"external_id": "photos"}, descriptions=descriptions)
    assert asset["folder"] == {"id": reference_id("folder", "photos")}
    assert box.stats()["assets"] == 1


def test_malformed_json_is_400_kontent_body_not_422(box: Box) -> None:
    r = box.api.post("assets", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_kontent_error(r, 400)
    assert_kontent_error(box.api.post("assets", json=[1, 2]), 400)
    assert_kontent_error(box.api.post("assets", json={"file_reference": "x"}), 400)


def test_unknown_route_404_and_wrong_method_405_use_kontent_body(box: Box) -> None:
    assert_kontent_error(box.api.get("nothing-here"), 404)
    assert_kontent_error(box.api.patch("assets"), 405)
    assert_kontent_error(box.api.get("files/a.png"), 405)


# ---- binary upload ------------------------------------------------------------------------


def test_content_type_must_match_extension(box: Box) -> None:
    r = box.api.post("files/photo.png", content=b"abc", headers={"Content-Type": "image/jpeg"})
    assert_kontent_error(r, 400)
    assert_kontent_error(box.api.post("files/photo.png", content=b"abc"), 400)  # no Content-Type
    upload(box.api, b"abc", "photo.jpg", "image/jpeg")
    upload(box.api, b"abc", "blob.unknownext", "application/x-whatever")  # unknown extension: any type
    assert box.stats()["uploads"] == 2


def test_upload_without_content_length_is_400(box: Box) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    r = box.api.post("files/a.txt", content=chunks(), headers={"Content-Type": "text/plain"})
    assert "Content-Length" in assert_kontent_error(r, 400)["message"]
    assert box.stats()["uploads"] == 0


def test_oversize_upload_is_rejected(start: Callable[..., Box]) -> None:
    box = start(max_file_bytes=16)
    r = box.api.post("files/a.txt", content=b"x" * 17, headers={"Content-Type": "text/plain"})
    assert "16" in assert_kontent_error(r, 400)["message"]
    upload(box.api, b"x" * 16, "a.txt", "text/plain")
    assert (box.stats()["uploads"], box.stats()["bytes_uploaded"]) == (1, 16)


def test_body_shorter_than_content_length_is_400() -> None:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            headers = {**AUTH, "Content-Type": "text/plain", "Content-Length": "10"}
            return await client.post(f"/v2/projects/{ENV}/files/a.txt", content=b"abc", headers=headers)

    assert "does not match" in assert_kontent_error(asyncio.run(scenario()), 400)["message"]


def test_cdn_url_serves_uploaded_bytes_and_sanitised_name(box: Box) -> None:
    data = png(3, 4, os.urandom(300_000))
    r = box.api.post("files/my%20file%232.png", content=data, headers={"Content-Type": "image/png"})
    asset = add(box.api, r.json()["id"])
    assert asset["file_name"] == "my file_2.png"  # doc: "#" and the other listed characters become "_"
    assert asset["url"] == f"{box.root}/assets-cdn/{ENV}/{r.json()['id']}/my%20file_2.png"
    cdn = httpx.get(asset["url"])  # public: no Authorization header
    assert cdn.status_code == 200 and cdn.headers["content-type"] == "image/png"
    assert hashlib.md5(cdn.content).hexdigest() == hashlib.md5(data).hexdigest()
    assert httpx.get(asset["url"].replace("my%20file_2", "other")).status_code == 404
    assert box.stats()["requests"] == 2  # the CDN is not a vendor route


# ---- list / delete --------------------------------------------------------------------------


def test_list_paginates_with_x_continuation(start: Callable[..., Box]) -> None:
    box = start(page_size=2)
    ids = [add(box.api, upload(box.api, png(1, 1)))["id"] for _ in range(5)]
    seen, pages, token = [], [], None
    while True:
        r = box.api.get("assets", headers={"x-continuation": token} if token else {})
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(len(page["assets"]))
        seen += [a["id"] for a in page["assets"]]
        token = page["pagination"]["continuation_token"]
        if token is None:
            assert page["pagination"]["next_page"] is None
            break
        assert page["pagination"]["next_page"] == f"{box.root}/v2/projects/{ENV}/assets"
    assert pages == [2, 2, 1] and seen == ids
    assert_kontent_error(box.api.get("assets", headers={"x-continuation": "garbage!"}), 400)


def test_delete_then_404(box: Box) -> None:
    asset = add(box.api, upload(box.api, png(1, 1)), external_id="gone")
    r = box.api.delete("assets/external-id/gone")
    assert r.status_code == 204 and r.content == b""
    assert_kontent_error(box.api.get(f"assets/{asset['id']}"), 404, 105)
    assert_kontent_error(box.api.delete(f"assets/{asset['id']}"), 404, 105)
    assert box.stats()["assets"] == 0


# ---- rate limiting ----------------------------------------------------------------------------


def test_per_second_limit_returns_429_with_retry_after(start: Callable[..., Box]) -> None:
    box = start(per_second=3, per_minute=400)
    statuses = [box.api.get("assets") for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    body = assert_kontent_error(statuses[3], 429, 10000)
    assert body["message"] == RATE_MESSAGE
    retry_after = int(statuses[3].headers["Retry-After"])
    assert retry_after >= 1
    box.clock.advance(retry_after)
    assert box.api.get("assets").status_code == 200
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["throttled"]) == (6, 4, 2)


def test_per_minute_window_slides(start: Callable[..., Box]) -> None:
    box = start(per_second=100, per_minute=4)
    for _ in range(4):
        assert box.api.get("assets").status_code == 200
        box.clock.advance(10)
    r = box.api.get("assets")  # t=40: the oldest of the 4 admitted requests (t=0) leaves at t=60
    assert r.status_code == 429 and r.headers["Retry-After"] == "20"
    box.clock.advance(19.5)
    assert box.api.get("assets").headers["Retry-After"] == "1"
    box.clock.advance(0.5)
    assert box.api.get("assets").status_code == 200


def test_rejected_auth_does_not_consume_rate_limit(start: Callable[..., Box]) -> None:
    box = start(per_second=1)
    assert box.api.get("assets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert box.api.get("assets").status_code == 200
    assert box.api.get("assets").status_code == 429


def test_limits_can_change_live(box: Box) -> None:
    assert box.control("POST", "limits", json={"per_second": 1, "per_minute": 100}).status_code == 200
    assert [box.api.get("assets").status_code for _ in range(2)] == [200, 429]
    assert box.control("POST", "limits", json={"per_second": 0}).status_code == 400


# ---- control routes -----------------------------------------------------------------------------


def test_faults_answer_next_matching_requests(box: Box) -> None:
    fault = {"status": 503, "count": 1, "retry_after": 2, "route": "upload"}
    assert box.control("POST", "faults", json=fault).status_code == 200
    assert box.api.get("assets").status_code == 200  # other routes are untouched
    r = box.api.post("files/a.txt", content=b"abc", headers={"Content-Type": "text/plain"})
    assert_kontent_error(r, 503)
    assert r.headers["Retry-After"] == "2"
    upload(box.api, b"abc", "a.txt", "text/plain")
    box.control("POST", "faults", json={"status": 503, "count": 2})
    assert [box.api.get("assets").status_code for _ in range(3)] == [503, 503, 200]
    assert box.control("POST", "faults", json={"status": 200}).status_code == 400


def test_stats_count_routes_and_reset_clears_everything(box: Box) -> None:
    asset = add(box.api, upload(box.api, b"12345", "a.txt", "text/plain"))
    box.api.put(f"assets/{asset['id']}", json={"title": "t"})
    box.api.get(f"assets/{asset['id']}")
    box.api.get("assets")
    box.api.delete(f"assets/{asset['id']}")
    stats = box.stats()
    assert {k: v for k, v in stats["by_route"].items() if v} == {"upload": 1, "create": 1, "upsert": 1, "get": 1,
                                                                  "list": 1, "delete": 1}
    assert (stats["requests"], stats["accepted"], stats["uploads"], stats["bytes_uploaded"]) == (6, 6, 1, 5)
    add(box.api, upload(box.api, b"1", "b.txt", "text/plain"))
    assert box.stats()["assets"] == 1
    box.control("POST", "reset")
    stats = box.stats()
    assert stats["assets"] == 0 and stats["requests"] == 0 and set(stats["by_route"].values()) == {0}
    assert box.api.get("assets").json()["assets"] == []


def test_banner_names_base_url_and_demo_credentials() -> None:
    line = banner("kontent", "http://127.0.0.1:8799")
    assert "http://127.0.0.1:8799/v2" in line and DEMO_ENVIRONMENT_ID in line and DEMO_API_KEY in line


# ---- environment listings (shapes the JS management SDK parses) and strict references ----------


def strict_env(**kw: Any) -> dict[str, EnvConfig]:
    return {ENV: EnvConfig(DEMO_API_KEY, kw.pop("languages", ["en-US", "de-DE"]), collections=["default", "web"],
                           folders=["images", "brand/2024/spring"],
                           taxonomies={"colours": ["Red", "Dark green"]}, asset_elements={"colour": "colours"}, **kw)}


def test_listings_have_the_sdk_shapes_and_the_default_language_is_the_zero_id(start: Callable[..., Box]) -> None:
    box = start(environments=strict_env())
    langs = box.api.get("languages").json()
    assert set(langs) == {"languages", "pagination"} and langs["pagination"]["continuation_token"] is None
    default = [lang for lang in langs["languages"] if lang["is_default"]]
    assert [(d["id"], d["codename"]) for d in default] == [(ZERO_ID, "en-US")]  # renamed default language
    folders = box.api.get("folders").json()
    assert set(folders) == {"folders", "last_modified"}
    brand = next(f for f in folders["folders"] if f["name"] == "brand")
    assert brand["folders"][0]["name"] == "2024" and brand["folders"][0]["folders"][0]["name"] == "spring"
    assert brand["folders"][0]["folders"][0]["external_id"] == "brand/2024/spring"
    assert [c["codename"] for c in box.api.get("collections").json()["collections"]] == ["default", "web"]
    tax = box.api.get("taxonomies").json()
    assert set(tax) == {"taxonomies", "pagination"}
    assert [(t["name"], t["codename"]) for t in tax["taxonomies"][0]["terms"]] == [("Red", "red"),
                                                                                  ("Dark green", "dark_green")]
    stats = box.stats()["by_route"]
    assert (stats["languages"], stats["folders"], stats["collections"], stats["taxonomies"]) == (1, 1, 1, 1)


def test_the_renamed_default_language_is_not_reachable_as_codename_default(start: Callable[..., Box]) -> None:
    box = start(environments=strict_env())
    ref = {"id": upload(box.api, png(1, 1)), "type": "internal"}
    r = box.api.post("assets", json={"file_reference": ref,
                                     "descriptions": [{"language": {"codename": "default"}, "description": "x"}]})
    assert_kontent_error(r, 400)
    asset = add(box.api, ref["id"], descriptions=[{"language": {"id": ZERO_ID}, "description": "x"}])
    assert asset["descriptions"] == [{"language": {"id": ZERO_ID}, "description": "x"}]


def test_elements_and_terms_are_resolved_and_stored_by_id(start: Callable[..., Box]) -> None:
    box = start(environments=strict_env())
    tax = box.api.get("taxonomies").json()["taxonomies"][0]
    red, green = (t["id"] for t in tax["terms"])
    ref = {"id": upload(box.api, png(1, 1)), "type": "internal"}
    for bad in ([{"element": {"codename": "nope"}, "value": []}],
                [{"element": {"codename": "colour"}, "value": [{"codename": "blue"}]}]):
        body = assert_kontent_error(box.api.post("assets", json={"file_reference": ref, "elements": bad}), 400)
        assert "does not exist" in body["validation_errors"][0]["message"]
    asset = add(box.api, ref["id"], external_id="e1",
                elements=[{"element": {"codename": "colour"}, "value": [{"codename": "red"}, {"id": green}]}])
    element_id = reference_id("asset_element", "colour")
    assert asset["elements"] == [{"element": {"id": element_id}, "value": [{"id": red}, {"id": green}]}]
    assert box.stats()["assets"] == 1


def test_external_ids_with_slash_dot_or_semicolon_are_refused(box: Box) -> None:
    ref = {"id": upload(box.api, png(1, 1)), "type": "internal"}
    for x in ("a/b", "a.b", "a;b"):
        assert_kontent_error(box.api.put(f"assets/external-id/{quote(x, safe='')}", json={"file_reference": ref}), 400)
        assert_kontent_error(box.api.post("assets", json={"file_reference": ref, "external_id": x}), 400)
    assert box.stats()["assets"] == 0


def test_folders_and_terms_can_be_added_and_the_folder_limit_holds(start: Callable[..., Box]) -> None:
    box = start(environments=strict_env())
    brand = next(f for f in box.api.get("folders").json()["folders"] if f["name"] == "brand")
    r = box.api.patch("folders", json=[{"op": "addInto", "reference": {"id": brand["id"]},
                                        "value": {"name": "2025", "folders": [{"name": "autumn"}]}}])
    assert r.status_code == 200, r.text
    y2025 = next(f for f in r.json()["folders"] if f["name"] == "brand")["folders"][1]
    assert (y2025["name"], y2025["folders"][0]["name"]) == ("2025", "autumn")
    too_many = [{"op": "addInto", "value": {"name": f"f{i}"}} for i in range(1000)]
    assert_kontent_error(box.api.patch("folders", json=too_many), 400)
    r = box.api.patch("taxonomies/codename/colours", json=[{"op": "addInto", "value": {"name": "Blue"}}])
    assert r.status_code == 200 and r.json()["terms"][-1]["codename"] == "blue"
    add(box.api, upload(box.api, png(1, 1)), folder={"id": y2025["folders"][0]["id"]},
        elements=[{"element": {"codename": "colour"}, "value": [{"codename": "blue"}]}])
