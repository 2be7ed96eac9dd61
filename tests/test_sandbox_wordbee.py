"""Tests for the Wordbee Translator API2 asset simulator, driven over a real socket."""

import hashlib
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from assetferry.sandbox.server import banner, running
from tests.sandbox_kit import FakeClock, SandboxBox, simulator_fixtures
from assetferry.sandbox.wordbee import (
    DEMO_ACCOUNT_ID,
    DEMO_API_KEY,
    DEMO_DOCUMENT_ID,
    DEMO_PROJECT_ID,
    DEMO_SCOPE,
    DEMO_SEGMENT_IDS,
    create_app,
)

SEG, SEG2, SEG3 = (int(s) for s in DEMO_SEGMENT_IDS.split(","))
PROJECT, DOCUMENT = int(DEMO_PROJECT_ID), int(DEMO_DOCUMENT_ID)
START = 1_753_631_913.0  # 2025-07-27T15:58:33Z, the day of the doc's example
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")
TOKEN_INVALID = {
    "title": "Token invalid or expired.",
    "details": "Token invalid or expired.",
    "messages": [
        {
            "title": "Not authenticated",
            "details": "API construct session from token failed with error: Not authenticated",
            "errorurl": None,
        }
    ],
    "reason": "Not authenticated - API construct session from token failed with error: Not authenticated",
}



@dataclass
class Box(SandboxBox):
    """The simulator under test (see tests/sandbox_kit.py)."""

    def login(self, account: str = DEMO_ACCOUNT_ID, key: str = DEMO_API_KEY) -> dict[str, str]:
        r = self.api.post("auth/token", json={"accountid": account, "key": key})
        assert r.status_code == 200, r.text
        token = r.json()
        assert isinstance(token, str) and re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", token)
        return {"X-Auth-Token": token, "X-Auth-AccountId": account}




def launch(stack: ExitStack, **kwargs: Any) -> Box:
    clock = FakeClock(START)
    root = stack.enter_context(running(create_app(clock=clock, **kwargs)))
    return Box(api=stack.enter_context(httpx.Client(base_url=f"{root}/api/", timeout=5)), root=root, clock=clock)


start, shared, box = simulator_fixtures(launch, after_reset=lambda box: setattr(box.clock, "now", START))


def upload(box: Box, auth: dict[str, str], data: bytes, name: str = "photo.jpg", **params: Any) -> str:
    r = box.api.post("media/upload", params=params, files={"file": (name, data, "application/octet-stream")}, headers=auth)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert re.fullmatch(r"[0-9a-f]{32}", result["token"])
    return str(result["token"])


def attach(box: Box, auth: dict[str, str], body: dict[str, Any], segment: int = SEG, scope: str = DEMO_SCOPE) -> httpx.Response:
    return box.api.post(f"resources/assets/{segment}", params={"scope": scope}, json=body, headers=auth)


def assert_error(r: httpx.Response, title: str | None = None, status: int = 400) -> dict[str, Any]:
    """Wordbee's envelope; `reason` mirrors `error.title` (except for the token error)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "reason"}
    error = body["error"]
    assert set(error) == {"operation", "date", "title", "details", "errorurl", "messages"}
    assert error["operation"] is None and error["errorurl"] is None and ISO.match(error["date"])
    if title is not None:
        assert error["title"] == title
    if error["title"] != TOKEN_INVALID["title"]:
        assert body["reason"] == error["title"] and error["details"] is None and error["messages"] == []
    return dict(body)


def assert_token_invalid(r: httpx.Response) -> None:
    body = assert_error(r, TOKEN_INVALID["title"])
    assert body["error"]["details"] == TOKEN_INVALID["details"]
    assert body["error"]["messages"] == TOKEN_INVALID["messages"]
    assert body["reason"] == TOKEN_INVALID["reason"]


def throttle_body(limit: int, period: str) -> dict[str, Any]:
    message = f"Requests throttled. Maximum allowed {limit} per {period}."
    return {"error": {"type": "Throttling error", "message": message}, "reason": message}


# ---- auth -------------------------------------------------------------------------------------


def test_token_is_a_json_string_and_bad_key_is_400_invalid_private_key(box: Box) -> None:
    auth = box.login()
    assert box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).json() == []
    for body in ({"accountid": DEMO_ACCOUNT_ID, "key": "nope"}, {"accountid": "other", "key": DEMO_API_KEY}, {}):
        r = box.api.post("auth/token", json=body)
        assert_error(r, "Invalid private key.")
        assert DEMO_API_KEY not in r.text
    assert_error(box.api.post("auth/token", content=b"{nope", headers={"Content-Type": "application/json"}))
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["auth_tokens_issued"]) == (6, 2, 1)


def test_missing_wrong_or_mismatched_auth_headers_are_400_token_invalid(box: Box) -> None:
    auth = box.login()
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    for headers in (
        {},
        {"X-Auth-Token": auth["X-Auth-Token"]},
        {"X-Auth-AccountId": DEMO_ACCOUNT_ID},
        {**auth, "X-Auth-Token": "61094C3A-F44F-4D5C-AD34-1D5185EFFE94"},
        {**auth, "X-Auth-AccountId": "supertrans"},
    ):
        r = box.api.get(url, params=params, headers=headers)
        assert_token_invalid(r)
        assert auth["X-Auth-Token"] not in r.text
    assert box.api.get(url, params=params, headers={k.lower(): v.lower() for k, v in auth.items()}).status_code == 200
    stats = box.stats()
    assert (stats["requests"], stats["accepted"], stats["by_route"]["list"]) == (7, 2, 6)


def test_token_expires_after_idle_period_sliding(start: Callable[..., Box]) -> None:
    box = start(token_idle_seconds=60)
    auth = box.login()
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    for _ in range(3):  # each call restarts the idle period
        box.clock.advance(59)
        assert box.api.get(url, params=params, headers=auth).status_code == 200
    box.clock.advance(60)
    assert_token_invalid(box.api.get(url, params=params, headers=auth))
    box.clock.advance(-30)  # gone for good, even if the clock is wound back
    assert_token_invalid(box.api.get(url, params=params, headers=auth))


def test_default_idle_period_is_30_minutes_and_control_route_expires_tokens(box: Box) -> None:
    auth, other = box.login(), box.login()
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    box.clock.advance(1799)
    assert box.api.get(url, params=params, headers=auth).status_code == 200
    box.clock.advance(1800)
    assert_token_invalid(box.api.get(url, params=params, headers=auth))
    fresh = box.login()
    # `auth` was dropped when refused; `other` (idle too long, not yet presented) and `fresh` remain
    assert box.control("POST", "expire_tokens").json() == {"expired": 2}
    assert_token_invalid(box.api.get(url, params=params, headers=fresh))
    assert_token_invalid(box.api.get(url, params=params, headers=other))


def test_delete_token_invalidates_it(box: Box) -> None:
    auth = box.login()
    r = box.api.delete("auth/token", headers=auth)
    assert r.status_code == 200 and r.content == b""
    assert_token_invalid(box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth))
    assert_token_invalid(box.api.delete("auth/token", headers=auth))
    assert box.stats()["by_route"]["logout"] == 2


# ---- media upload ---------------------------------------------------------------------------------


def test_media_upload_is_multipart_only_and_returns_token_and_name(box: Box) -> None:
    auth = box.login()
    r = box.api.post("media/upload", files={"file": ("myfile.docx", b"PK\x03\x04")}, headers=auth)
    assert r.status_code == 200 and set(r.json()) == {"result"} and r.json()["result"]["name"] == "myfile.docx"
    r = box.api.post("media/upload", params={"filename": "renamed.png"}, files={"f": ("x.bin", b"1")}, headers=auth)
    assert r.json()["result"]["name"] == "renamed.png"  # the query parameter wins
    r = box.api.post("media/upload", params={"filename": "a.png"}, content=b"binary", headers=auth)
    assert "multipart" in assert_error(r)["reason"]
    r = box.api.post("media/upload", files={"field": (None, "not a file")}, headers=auth)
    assert_error(r, "No file was found in the multipart upload.")
    stats = box.stats()
    assert (stats["uploads"], stats["bytes_uploaded"], stats["file_tokens_issued"]) == (2, 5, 2)


def test_maxsize_and_hard_limit(start: Callable[..., Box]) -> None:
    box = start(max_upload_bytes=16)
    auth = box.login()
    r = box.api.post("media/upload", params={"maxsize": 4}, files={"file": ("a.txt", b"12345")}, headers=auth)
    assert "4 bytes" in assert_error(r)["reason"]
    assert_error(box.api.post("media/upload", params={"maxsize": "big"}, files={"file": ("a.txt", b"1")}, headers=auth))
    r = box.api.post("media/upload", files={"file": ("a.txt", b"x" * 17)}, headers=auth)
    assert "16 bytes" in assert_error(r)["reason"]
    upload(box, auth, b"x" * 16, "a.txt")
    upload(box, auth, b"1234", "a.txt", maxsize=4)
    assert box.stats()["uploads"] == 2


# ---- attach asset -----------------------------------------------------------------------------------


def test_attach_returns_documented_asset_object(box: Box) -> None:
    auth = box.login()
    data = os.urandom(2048)
    box.clock.advance(0.899998)
    token = upload(box, auth, data, "pexels-gons3.jpg")
    box.clock.advance(19.568772)
    r = attach(box, auth, {"filetoken": token, "locale": "en"})
    assert r.status_code == 200, r.text
    asset = r.json()
    assert asset == {
        "projectId": PROJECT,
        "documentId": DOCUMENT,
        "segmentId": SEG,
        "locale": "en",
        "relativePath": "",
        "name": "pexels-gons3.jpg",
        "size": 2048,
        "contentType": "image/jpeg",
        "createdDate": "2025-07-27T15:58:53.4687700Z",
        "modifiedDate": "2025-07-27T15:58:33.8999980Z",  # the uploaded file's time, as in the doc example
        "downloadUrl": f"{box.root}/api/resources/assets/{SEG}?locale=en&scope=pr7214&filename=pexels-gons3.jpg&v=638892287138999980",
    }
    download = box.api.get(asset["downloadUrl"], headers=auth)
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-type"] == "image/jpeg"
    assert download.headers["content-disposition"].startswith('inline; filename="pexels-gons3.jpg"')
    [record] = box.records()
    assert record["md5"] == hashlib.md5(data).hexdigest() and record["size"] == 2048 and record["overwrites"] == 0
    assert (record["project"], record["segment"], record["locale"], record["relativePath"]) == (PROJECT, SEG, "en", "")


def test_file_token_is_single_use_and_failed_attach_does_not_consume_it(box: Box) -> None:
    auth = box.login()
    token = upload(box, auth, b"abc", "a.png")
    assert_error(attach(box, auth, {"filetoken": token}, segment=99))  # refused: token untouched
    r = attach(box, auth, {"filetoken": token})
    assert r.status_code == 200 and r.json()["locale"] is None and r.json()["relativePath"] == ""
    again = attach(box, auth, {"filetoken": token}, segment=SEG2)
    assert "filetoken" in assert_error(again)["reason"]
    assert_error(attach(box, auth, {"filetoken": "0" * 32}))
    assert box.control("GET", "records").json()["file_tokens"] == {"issued": 1, "used": 1}
    assert len(box.records()) == 1


def test_reusable_file_tokens_when_configured(start: Callable[..., Box]) -> None:
    box = start(single_use_file_tokens=False)
    auth = box.login()
    token = upload(box, auth, b"abc", "a.png")
    assert attach(box, auth, {"filetoken": token}).status_code == 200
    assert attach(box, auth, {"filetoken": token}, segment=SEG2).status_code == 200
    assert len(box.records()) == 2


def test_same_segment_locale_path_and_name_overwrites(box: Box) -> None:
    auth = box.login()
    first = attach(box, auth, {"filetoken": upload(box, auth, b"one", "pic.png"), "locale": "de"}).json()
    box.clock.advance(5)
    second = attach(box, auth, {"filetoken": upload(box, auth, b"second", "pic.png"), "locale": "de"}).json()
    assert second["createdDate"] == first["createdDate"]
    assert second["modifiedDate"] > first["modifiedDate"] and second["size"] == 6
    assert parse_qs(urlsplit(second["downloadUrl"]).query)["v"] != parse_qs(urlsplit(first["downloadUrl"]).query)["v"]
    assert box.api.get(second["downloadUrl"], headers=auth).content == b"second"
    # a different locale, path or segment is a different asset
    attach(box, auth, {"filetoken": upload(box, auth, b"3", "pic.png"), "locale": "fr"})
    attach(box, auth, {"filetoken": upload(box, auth, b"4", "pic.png"), "locale": "de", "relativePath": "x"})
    attach(box, auth, {"filetoken": upload(box, auth, b"5", "pic.png"), "locale": "de"}, segment=SEG2)
    records = box.records()
    assert len(records) == 4 and box.stats()["overwrites"] == 1
    overwritten = [r for r in records if r["overwrites"]]
    assert len(overwritten) == 1 and overwritten[0]["md5"] == hashlib.md5(b"second").hexdigest()


def test_path_in_file_name_and_relative_path_precedence(box: Box) -> None:
    auth = box.login()
    r = attach(box, auth, {"filetoken": upload(box, auth, b"1", "ignored.bin", filename="ui/screens/login.png")})
    assert (r.json()["relativePath"], r.json()["name"]) == ("ui\\screens", "login.png")
    body = {"filetoken": upload(box, auth, b"2", "sub/dir/login.png"), "relativePath": "/public/images/"}
    r = attach(box, auth, body)
    assert (r.json()["relativePath"], r.json()["name"]) == ("public\\images", "login.png")
    assert parse_qs(urlsplit(r.json()["downloadUrl"]).query)["relativePath"] == ["public\\images"]
    assert box.api.get(r.json()["downloadUrl"], headers=auth).content == b"2"
    r = box.api.get(f"resources/assets/{SEG}", params={"scope": DEMO_SCOPE, "filename": "ui/screens/login.png"}, headers=auth)
    assert r.content == b"1"
    r = attach(box, auth, {"filetoken": upload(box, auth, b"\xff", "Çafé menu.png"), "locale": "fr-CA"})
    assert r.json()["name"] == "Çafé menu.png"
    download = box.api.get(r.json()["downloadUrl"], headers=auth)
    assert download.content == b"\xff" and "filename*=UTF-8''%C3%87af%C3%A9%20menu.png" in download.headers["content-disposition"]
    r = box.api.post("media/upload", files={"file": ('a"b.png', b"1")}, headers=auth)
    assert "'filename'" in assert_error(r)["reason"]  # Windows-reserved characters are refused
    bad = attach(box, auth, {"filetoken": upload(box, auth, b"3", "x.png"), "relativePath": "../../etc"})
    assert "relativePath" in assert_error(bad)["reason"]
    assert len(box.records()) == 3


def test_unknown_project_segment_scope_and_bad_bodies_are_400(box: Box) -> None:
    auth = box.login()
    assert box.control("POST", "segments", json={"project": 8000, "segments": [5001]}).status_code == 200
    token = upload(box, auth, b"abc", "a.png")
    cases = [
        (SEG, "pr9999", {"filetoken": token}, "scope"),  # unknown project
        (SEG, "", {"filetoken": token}, "scope"),  # missing scope
        (SEG, "project7214", {"filetoken": token}, "scope"),
        (SEG, "jbs12", {"filetoken": token}, "scope"),  # no jobs exist in the sandbox
        (123, DEMO_SCOPE, {"filetoken": token}, "segmentid"),  # unknown segment
        (5001, DEMO_SCOPE, {"filetoken": token}, "segmentid"),  # segment of another project
        ("abc", DEMO_SCOPE, {"filetoken": token}, "segmentid"),
        (SEG, DEMO_SCOPE, {}, "filetoken"),
        (SEG, DEMO_SCOPE, {"filetoken": token, "locale": "not a locale"}, "locale"),
        (SEG, DEMO_SCOPE, {"filetoken": token, "relativePath": 5}, "relativePath"),
    ]
    for segment, scope, body, param in cases:
        r = box.api.post(f"resources/assets/{segment}", params={"scope": scope} if scope else {}, json=body, headers=auth)
        assert f"'{param}'" in assert_error(r)["reason"], (segment, scope, body)
    assert_error(box.api.post(f"resources/assets/{SEG}", params={"scope": DEMO_SCOPE}, content=b"[1]", headers=auth))
    assert box.records() == [] and box.stats()["file_tokens_used"] == 0
    assert attach(box, auth, {"filetoken": token}, segment=5001, scope="PR8000").json()["projectId"] == 8000


# ---- list / download / delete --------------------------------------------------------------------


def test_list_download_and_delete(box: Box) -> None:
    auth = box.login()
    for seg, name, locale in ((SEG, "a.png", "en"), (SEG, "b.mp4", None), (SEG2, "c.pdf", "de")):
        body = {"filetoken": upload(box, auth, name.encode(), name), **({"locale": locale} if locale else {})}
        assert attach(box, auth, body, segment=seg).status_code == 200
    listed = box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).json()
    assert [(a["name"], a["locale"], a["contentType"]) for a in listed] == [("a.png", "en", "image/png"), ("b.mp4", None, "video/mp4")]
    both = box.api.get("resources/assets/list", params={"scope": DEMO_SCOPE, "segmentIds": f"{SEG},{SEG2}"}, headers=auth)
    assert [a["name"] for a in both.json()] == ["a.png", "b.mp4", "c.pdf"]
    assert_error(box.api.get("resources/assets/list", params={"scope": DEMO_SCOPE, "segmentIds": "1,x"}, headers=auth))
    assert_error(box.api.get("resources/assets/list", params={"scope": DEMO_SCOPE}, headers=auth))
    missing = box.api.get(f"resources/assets/{SEG}", params={"scope": DEMO_SCOPE, "filename": "a.png"}, headers=auth)
    assert_error(missing, "The requested file does not exist.")  # stored under locale "en" only
    params = {"scope": DEMO_SCOPE, "filename": "a.png", "locale": "en"}
    assert box.api.get(f"resources/assets/{SEG}", params=params, headers=auth).content == b"a.png"
    r = box.api.delete(f"resources/assets/{SEG}", params=params, headers=auth)
    assert r.status_code == 200 and r.content == b""
    assert box.api.delete(f"resources/assets/{SEG}", params=params, headers=auth).status_code == 200  # idempotent
    assert box.api.delete(f"resources/assets/{SEG2}", params={"scope": DEMO_SCOPE}, headers=auth).status_code == 200
    assert [r["name"] for r in box.records()] == ["b.mp4"]
    assert box.stats()["deleted"] == 2


# ---- hourly allowance ------------------------------------------------------------------------------


def test_hourly_allowance_429_without_retry_after_and_auth_calls_not_counted(start: Callable[..., Box]) -> None:
    box = start(per_hour=3, token_idle_seconds=10_000)
    auth = box.login()
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    for _ in range(3):
        assert box.api.get(url, params=params, headers=auth).status_code == 200
        box.clock.advance(600)
    r = box.api.get(url, params=params, headers=auth)
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.json() == throttle_body(3, "01:00:00")
    assert attach(box, auth, {"filetoken": "x"}).status_code == 429
    other = box.login()  # auth calls are outside the allowance
    assert box.api.delete("auth/token", headers=other).status_code == 200
    box.clock.advance(1800)  # t=3600: the first call (t=0) has left the sliding window
    assert box.api.get(url, params=params, headers=auth).status_code == 200
    assert box.api.get(url, params=params, headers=auth).status_code == 429
    stats = box.stats()
    assert (stats["throttled"], stats["by_route"]["auth"], stats["by_route"]["logout"]) == (3, 2, 1)


def test_invalid_token_is_refused_before_the_allowance(start: Callable[..., Box]) -> None:
    box = start(per_hour=1)
    auth = box.login()
    assert_token_invalid(box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}))
    assert box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).status_code == 200
    assert box.stats()["throttled"] == 0


def test_limits_change_live_including_per_second(box: Box) -> None:
    auth = box.login()
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    r = box.control("POST", "limits", json={"per_second": 2})
    assert r.json() == {"per_hour": 1000, "per_second": 2, "token_idle_seconds": 1800, "max_upload_bytes": 100 * 1024 * 1024}
    assert [box.api.get(url, params=params, headers=auth).status_code for _ in range(3)] == [200, 200, 429]
    assert box.api.get(url, params=params, headers=auth).json() == throttle_body(2, "00:00:01")
    box.clock.advance(1)
    assert box.api.get(url, params=params, headers=auth).status_code == 200
    for bad in ({"per_hour": 0}, {"per_second": True}, {"token_idle_seconds": -1}, {"max_upload_bytes": "1"}):
        assert_error(box.control("POST", "limits", json=bad))
    box.control("POST", "limits", json={"per_hour": 4, "per_second": None})
    statuses = [box.api.get(url, params=params, headers=auth).status_code for _ in range(2)]
    assert statuses == [200, 429]  # 3 admitted so far; throttled calls do not count
    box.control("POST", "reset")
    assert box.control("POST", "limits", json={}).json()["per_hour"] == 1000


# ---- faults ----------------------------------------------------------------------------------------


def test_fault_before_stores_nothing(box: Box) -> None:
    auth = box.login()
    token = upload(box, auth, b"abc", "a.png")
    fault = {"status": 503, "count": 1, "retry_after": 7, "route": "attach"}
    assert box.control("POST", "faults", json=fault).status_code == 200
    assert box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).status_code == 200
    r = attach(box, auth, {"filetoken": token})
    assert_error(r, "Injected sandbox fault (HTTP 503).", status=503)
    assert r.headers["Retry-After"] == "7"
    assert box.records() == []
    assert attach(box, auth, {"filetoken": token}).status_code == 200  # token was not consumed
    assert box.stats()["accepted"] == 4  # upload, list, attach; the faulted attach was not admitted


def test_fault_after_stores_then_answers_error(box: Box) -> None:
    auth = box.login()
    token = upload(box, auth, b"abc", "a.png")
    fault = {"status": 500, "count": 1, "route": "attach", "when": "after", "body": {"Message": "lost"}}
    box.control("POST", "faults", json=fault)
    r = attach(box, auth, {"filetoken": token, "locale": "en"})
    assert r.status_code == 500 and r.json() == {"Message": "lost"}
    [record] = box.records()
    assert record["locale"] == "en" and record["md5"] == hashlib.md5(b"abc").hexdigest()
    assert_error(attach(box, auth, {"filetoken": token, "locale": "en"}))  # the token is gone: re-upload
    listed = box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).json()
    assert [a["name"] for a in listed] == ["a.png"]  # a client can reconcile by listing


def test_fault_429_uses_throttle_body_and_bad_fault_specs_refused(box: Box) -> None:
    auth = box.login()
    box.control("POST", "faults", json={"status": 429, "count": 2})
    url, params = f"resources/assets/{SEG}/list", {"scope": DEMO_SCOPE}
    statuses = [box.api.get(url, params=params, headers=auth) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].json() == throttle_body(1000, "01:00:00") and "retry-after" not in statuses[0].headers
    assert box.stats()["throttled"] == 2
    for bad in ({"status": 200}, {"status": 500, "count": 0}, {"status": 500, "route": "nope"}, {"status": 500, "when": "later"}):
        assert_error(box.control("POST", "faults", json=bad))


# ---- control routes ---------------------------------------------------------------------------------


def test_sandbox_segments_and_reset(box: Box) -> None:
    auth = box.login()
    r = box.control("POST", "segments", json={"project": 42, "segments": [7, {"id": 8, "document": 99}]})
    assert r.json() == {"project": 42, "segments": [{"segment": 7, "document": 50001}, {"segment": 8, "document": 99}]}
    assert_error(box.control("POST", "segments", json={"project": 43, "segments": [7]}))  # owned by project 42
    assert_error(box.control("POST", "segments", json={"project": 42, "segments": ["x"]}))
    assert attach(box, auth, {"filetoken": upload(box, auth, b"1", "a.png")}, segment=8, scope="pr42").json()["documentId"] == 99
    stats = box.stats()
    assert stats["assets"] == 1 and stats["attaches"] == 1 and stats["requests"] == 3
    assert set(stats["by_route"]) == {"auth", "logout", "media", "attach", "list", "download", "delete"}
    box.control("POST", "reset")
    stats = box.stats()
    assert stats["assets"] == 0 and stats["requests"] == 0 and set(stats["by_route"].values()) == {0}
    segments = box.control("GET", "records").json()["segments"]
    assert {s["segment"] for s in segments} == {SEG, SEG2, SEG3}
    assert_token_invalid(box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth))


def test_unknown_route_404_and_wrong_method_405_use_envelope(box: Box) -> None:
    assert_error(box.api.get("nothing-here"), status=404)
    assert_error(box.api.put(f"resources/assets/{SEG}"), status=405)
    assert box.stats()["requests"] == 0


def test_banner_names_base_url_and_demo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from assetferry.sandbox import server, wordbee

    monkeypatch.setitem(server.SIMULATORS, "wordbee", wordbee.create_app)  # registering it is the lead's job
    line = banner("wordbee", "http://127.0.0.1:8799")
    assert "base_url=http://127.0.0.1:8799/api" in line
    assert f"account_id={DEMO_ACCOUNT_ID}" in line and f"api_key={DEMO_API_KEY}" in line and "scope=pr7214" in line


# ---- additions: file name extension, held faults, session counters, demo ---------------------------


def test_upload_file_name_needs_an_extension(box: Box) -> None:
    auth = box.login()
    for name in ("README", "archive.", ".png"):
        r = box.api.post("media/upload", params={"filename": name}, files={"file": ("x.bin", b"1")}, headers=auth)
        assert "'filename'" in assert_error(r)["reason"], name
    assert upload(box, auth, b"1", "notes.v2.txt")
    assert box.stats()["uploads"] == 1


def test_session_counters_and_refused_tokens(box: Box) -> None:
    auth, other = box.login(), box.login()
    assert box.stats()["sessions"] == 2
    box.api.delete("auth/token", headers=other)
    assert_token_invalid(box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=other))
    stats = box.stats()
    assert (stats["sessions"], stats["tokens_refused"]) == (1, 1)
    assert box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth).status_code == 200


def test_a_delayed_fault_holds_the_request_until_the_client_hangs_up(box: Box) -> None:
    import json
    import socket

    auth = box.login()
    token = upload(box, auth, b"abc", "a.png")
    fault = {"status": 503, "count": 1, "route": "attach", "when": "after", "delay": 30}
    assert box.control("POST", "faults", json=fault).status_code == 200
    host, port = urlsplit(box.root).hostname, urlsplit(box.root).port
    body = json.dumps({"filetoken": token}).encode()
    head = (f"POST /api/resources/assets/{SEG}?scope={DEMO_SCOPE} HTTP/1.1\r\nHost: {host}\r\n"
            f"X-Auth-Token: {auth['X-Auth-Token']}\r\nX-Auth-AccountId: {auth['X-Auth-AccountId']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection((host, port))
    sock.sendall(head + body)
    deadline = time.monotonic() + 10
    while box.stats()["held"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(box.records()) == 1  # "after": stored; the reply is what is held
    sock.close()  # the client goes away (as a killed process does)
    deadline = time.monotonic() + 10
    while box.stats()["held"]:
        assert time.monotonic() < deadline, "the hold did not end when the client hung up"
        time.sleep(0.02)
    for bad in ({"status": 500, "delay": -1}, {"status": 500, "delay": "1"}, {"status": 500, "delay": 601}):
        assert_error(box.control("POST", "faults", json=bad))


def test_a_short_delay_then_the_fault(box: Box) -> None:
    auth = box.login()
    box.control("POST", "faults", json={"status": 502, "count": 1, "route": "list", "delay": 0.2})
    started = time.monotonic()
    r = box.api.get(f"resources/assets/{SEG}/list", params={"scope": DEMO_SCOPE}, headers=auth)
    assert r.status_code == 502 and time.monotonic() - started >= 0.2
    assert box.stats()["accepted"] == 1  # the login only: a "before" fault is not admitted


def test_demo_job_points_at_this_simulator_and_its_manifest_rows_fit(tmp_path: Any) -> None:
    import csv
    from pathlib import Path

    from assetferry.sandbox.wordbee import demo_job

    demo_dir = Path(__file__).resolve().parent.parent / "sandbox" / "demo"
    job, env = demo_job("http://127.0.0.1:9", demo_dir, None)
    destination = job["destination"]
    assert destination["url"] == "http://127.0.0.1:9/api" and destination["settings"] == {"project_id": PROJECT}
    assert {v.removeprefix("env:") for v in destination["credentials"].values()} == set(env)
    assert set(env.values()) == {DEMO_ACCOUNT_ID, DEMO_API_KEY}
    with open(job["source"]["url"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and len({r["id"] for r in rows}) == 36
    assert {r["parent"] for r in rows} == set(DEMO_SEGMENT_IDS.split(","))
    assert all((demo_dir / r["file"]).is_file() for r in rows)
