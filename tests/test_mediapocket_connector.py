"""The Media Pocket connector below the flow: prepare's rejects, error classification, the dry-run
plan (no secret, no presigned URL), and a process killed at each step of a load (simulated by an
exception raised in the transport, so the kill lands exactly there) followed by a resume that
leaves every asset exactly once, with its media."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr, ValidationError
from starlette.staticfiles import StaticFiles

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.files import FileInfo
from assetferry.connectors.core.ledger import Ledger, entry
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from assetferry.connectors.vendors import mediapocket as mp
from assetferry.sandbox import mediapocket as sim
from assetferry.sandbox.server import running

PROJECT = sim.DEMO_PROJECT_ID


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    www = tmp_path_factory.mktemp("www")
    with ExitStack() as stack:
        root = stack.enter_context(running(sim.create_app()))
        files = stack.enter_context(running(StaticFiles(directory=str(www))))
        yield root, files, www


@pytest.fixture
def vendor(servers: tuple[str, str, Path]) -> tuple[str, str, Path]:
    httpx.post(f"{servers[0]}/_sandbox/reset").raise_for_status()
    return servers


def connector(root: str | None = "http://mp.invalid/api/v2", transport: httpx.BaseTransport | None = None,
              **settings: Any) -> mp.MediaPocketConnector:
    return mp.MediaPocketConnector(url=root, settings={"project_id": PROJECT, "requests_per_second": 500, **settings},
                                   credentials={"api_key": SecretStr(sim.DEMO_API_KEY)}, transport=transport)


def frame(rows: list[dict[str, Any]], tmp_path: Path) -> pd.DataFrame:
    good, rejects = canonicalize(RecordChunk(pd.DataFrame(rows), str(tmp_path / "m.csv"), 1), DuplicateTracker(),
                                 mp.SPEC.required_columns)
    assert rejects.empty
    return good


def files(folder: Path, n: int) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows, data = [], {}
    for i in range(n):
        rid = f"K-{i}"
        data[rid] = f"{rid} content ".encode() * (15 + i)
        (folder / f"{rid}.png").write_bytes(data[rid])
        rows.append({"id": rid, "title": f"Title {i}", "category": "Shots", "file": str(folder / f"{rid}.png")})
    return rows, data


# -- prepare, settings, classification -----------------------------------------------------------
def test_prepare_rejects_name_the_column_and_untitled_rows_take_the_file_name(tmp_path: Path) -> None:
    rows = [
        {"id": "OK", "title": "fine", "file": "https://cdn.example.org/a.png"},
        {"id": "UNTITLED", "file": "https://cdn.example.org/photo-7.jpg"},
        {"id": "LONG", "title": "x" * 256, "file": "https://cdn.example.org/b.png"},
        {"id": "TYPE", "title": "t", "file": "https://cdn.example.org/c.png", "media_type": "image"},
        {"id": "ARTICLE", "title": "t", "file": "https://cdn.example.org/d.png", "media_type": " Article "},
        {"id": "LOCAL", "title": "t", "file": str(tmp_path / "e.png")},
        {"id": "NOPROJECT", "title": "t", "file": "https://cdn.example.org/f.png", "parent": ""},
    ]
    c = connector(project_id=None)
    good, rejects = c.prepare(frame([{**r, "parent": r.get("parent", "P1")} for r in rows[:-1]] + rows[-1:],
                                    tmp_path))
    got = {r["id"]: (r["field"], r["reason"]) for r in rejects.to_dict("records")}
    assert got["LONG"] == ("title", "title is 256 characters; Media Pocket accepts at most 255")
    assert got["TYPE"][0] == "media_type" and "'image' is not allowed" in got["TYPE"][1]
    assert got["LOCAL"][0] == "file" and "staging" in got["LOCAL"][1]
    assert got["NOPROJECT"][0] == "parent"
    assert set(got) == {"LONG", "TYPE", "LOCAL", "NOPROJECT"}
    by_id = {r["id"]: r for r in good.to_dict("records")}
    assert by_id["UNTITLED"]["_title"] == "photo-7.jpg"
    assert by_id["ARTICLE"]["_article"] and not by_id["OK"]["_article"]
    assert dict(c.notes) == {mp._TITLE_FROM_FILE: 1}
    strict = connector(title_fallback="reject")
    _, rejects = strict.prepare(frame(rows[1:2], tmp_path))
    assert rejects["field"].tolist() == ["title"]


def test_content_ignores_category_case_and_never_holds_a_url(tmp_path: Path) -> None:
    c = connector()
    ready, _ = c.prepare(frame([{"id": "A", "title": "t", "category": "Product", "file": "s3://b/k.png"},
                                {"id": "A2", "title": "t", "category": "PRODUCT", "file": "s3://b/k.png"}], tmp_path))
    a, b = (c.content(r) for r in ready.to_dict("records"))
    assert a == b and "s3://" not in str(a)


def test_settings_are_checked_when_the_job_is_read() -> None:
    with pytest.raises(ValidationError, match="must be a reference"):
        mp.MediaPocketSettings(staging="s3://stage/", staging_options={"key": "AKIALITERAL"})
    with pytest.raises(ValidationError, match="cannot be presigned"):
        mp.MediaPocketSettings(staging="gs://stage/")
    mp.MediaPocketSettings(staging="s3://stage/", staging_options={"secret": "env:STAGE_SECRET"})
    with pytest.raises(ConfigError, match="needs destination.url"):
        connector(root=None)


def test_errors_are_read_from_the_body() -> None:
    c = connector()

    def answer(status: int, error: str) -> Any:
        return c.classify(httpx.Response(status, json={"error": error}))

    assert answer(422, "Missing parameter title").field == "title"
    invalid = answer(422, "Invalid parameter 'media_type' value \"image\": Must be one of: <code>article</code>.")
    assert invalid.field == "media_type" and invalid.message.startswith("Media Pocket 422: Invalid parameter")
    assert answer(422, "Missing parameter url[file_url]").field == "file"
    assert answer(404, "project not found").field == "parent"
    assert answer(404, "asset not found").field is None
    assert answer(400, "Title is too long (maximum is 255 characters)") is None  # the default table: reject
    leaked = c.error_message(httpx.Response(400, json={"error": "bad https://b.s3/k?X-Amz-Signature=abc"}))
    assert "abc" not in leaked and "https://b.s3/k?<query hidden>" in leaked


class StatOnly:
    """A file store that stats every file as 3 bytes with a fingerprint of its own."""

    def stat_many(self, urls: list[str]) -> list[FileInfo]:
        return [FileInfo(3, hashlib.md5(u.encode()).hexdigest()) for u in urls]


def test_the_plan_shows_every_request_without_secrets_or_signatures(tmp_path: Path) -> None:
    c = connector(s3_bucket="mp-import", staging="s3://stage/in/")
    local = tmp_path / "l.png"
    local.write_bytes(b"png")
    ready, _ = c.prepare(frame([
        {"id": "NEW", "title": "t", "category": "Cat", "tags": "a|b", "file": "s3://other/k.png",
         "media_type": "article"},
        {"id": "KEYED", "title": "t", "file": "s3://mp-import/dir/k.png"},
        {"id": "LOCAL", "title": "t", "file": str(local)},
        {"id": "KNOWN", "title": "new title", "file": "https://cdn.example.org/x.png?token=s3cr3t"},
        {"id": "ADOPT", "title": "t", "file": "https://cdn.example.org/y.png", "vendor_id": "AbCdEfGhIjKlMnOpQrSt"},
    ], tmp_path))
    c.files = StatOnly()  # the dry run stats files; here without reaching S3 or the web
    loader = Loader(c)
    todo, _ = loader.rows(ready, {})
    known = todo[3]
    priors = {"KNOWN": entry("KNOWN", "loaded", "r0", vendor_id="v_known", hash="old", file_hash=known.file_hash,
                             extra={"meta": "old", "media": c._media_key(known), "project": PROJECT})}
    items = {i.ids[0]: i.to_dict() for i in loader.plan(ready, priors)}
    text = str(items)
    assert sim.DEMO_API_KEY not in text and "X-Amz-Signature" not in text and "s3cr3t" not in text
    new = items["NEW"]["requests"][0]
    assert (items["NEW"]["action"], new["method"], new["headers"]["X-API-KEY"]) == ("create", "POST", "***")
    assert new["url"] == f"http://mp.invalid/api/v2/projects/{PROJECT}/assets"
    assert new["json"] == {"title": "t", "category": "Cat", "tags": ["a", "b"], "external_id": "NEW",
                           "media_type": "article",
                           "url": {"file_url": "<presigned s3://other/k.png (7 days)>", "filename": "k.png"}}
    assert items["KEYED"]["requests"][0]["json"]["s3"] == {"s3_key": "dir/k.png", "filename": "k.png"}
    assert items["LOCAL"]["requests"][0]["json"]["url"]["file_url"].startswith("<staged to s3://stage/in/")
    assert items["KNOWN"]["action"] == "update"  # only the metadata changed: one PUT
    assert [r["method"] for r in items["KNOWN"]["requests"]] == ["PUT"]
    assert items["KNOWN"]["requests"][0]["json"]["description"] == ""  # blank clears it
    assert items["ADOPT"]["action"] == "adopt+update+media"
    assert [r["method"] for r in items["ADOPT"]["requests"]] == ["GET", "PUT", "POST"]
    assert items["ADOPT"]["requests"][2]["json"]["file_url"] == "https://cdn.example.org/y.png"


# -- a process killed at each step, then resumed --------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: nothing of the loader's own handling runs after it."""


class KillAt(httpx.HTTPTransport):
    """Kills the process at the first request matching ``method`` and a path ending in ``tail``:
    ``before`` it reaches the vendor, or ``after`` the vendor answered (the answer never seen)."""

    def __init__(self, method: str, tail: str, when: str) -> None:
        super().__init__()
        self.method, self.tail, self.when, self.armed = method, tail, when, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        hit = self.armed and request.method == self.method and request.url.path.endswith(self.tail)
        if hit and self.when == "before":
            self.armed = False
            raise Killed
        response = super().handle_request(request)
        if hit:
            response.read()
            self.armed = False
            raise Killed
        return response


@pytest.mark.parametrize("method, tail, when, media_failures", [
    ("POST", "/assets", "before", 0),  # the intent is journaled, nothing reached the vendor
    ("POST", "/assets", "after", 0),  # the vendor created it; the reply died with the process
    ("POST", "/media", "before", 1),  # the create's media failed (asset journaled), killed before the retry
    ("POST", "/media", "after", 1),  # ... killed after the retry added the media
    ("PUT", "", "after", 0),  # an update (of known assets) killed after the vendor applied it
], ids=["create-before", "create-after", "media-before", "media-after", "update-after"])
def test_killed_at_each_step_then_resumed_leaves_each_asset_once_with_its_media(
        vendor: tuple[str, str, Path], tmp_path: Path, method: str, tail: str, when: str, media_failures: int) -> None:
    root, files_root, www = vendor
    base = f"{root}{sim.BASE_PATH}"
    staging = {"staging": f"file://{www}/{tmp_path.name}/", "public_base_url": f"{files_root}/{tmp_path.name}"}
    rows, data = files(tmp_path / "files", 3)
    ledger = Ledger(str(tmp_path / "state"))
    if method == "PUT":  # first a clean load, then every title changes
        ready, _ = connector(base, **staging).prepare(frame(rows, tmp_path))
        with ledger.writer("r0", 0) as journal:
            Loader(connector(base, **staging)).load(ready, {}, journal, "r0")
        rows = [{**r, "title": r["title"] + " (new)"} for r in rows]
    if media_failures:
        httpx.post(f"{root}/_sandbox/media_failures", json={"count": media_failures}).raise_for_status()

    killer = connector(base, transport=KillAt(method, tail, when), **staging)
    ready, _ = killer.prepare(frame(rows, tmp_path))
    journal = ledger.writer("killed", 0)  # never closed: the process is gone
    with pytest.raises(Killed):
        Loader(killer).load(ready, ledger.load().get_many(ready["id"].tolist()), journal, "killed")

    resumed = connector(base, **staging)
    with ledger.writer("resumed", 0) as journal:
        result = Loader(resumed).load(ready, ledger.load().get_many(ready["id"].tolist()), journal, "resumed")
    assert result.counts == {"loaded": 3}, result.outcomes
    got = httpx.get(f"{root}/_sandbox/records").json()["records"]
    assert Counter(r["external_id"] for r in got) == {"K-0": 1, "K-1": 1, "K-2": 1}  # exactly once
    for r in got:
        assert r["media"]["md5"] == hashlib.md5(data[r["external_id"]]).hexdigest()
        assert r["title"] == next(x["title"] for x in rows if x["id"] == r["external_id"])
    by_route = httpx.get(f"{root}/_sandbox/stats").json()["by_route"]
    lost_create = (tail, when) == ("/assets", "after")
    assert by_route["create"] == (4 if lost_create else 3)  # + the resend that found it "taken"
    entries = ledger.load()
    ids = {rid: entries[rid].vendor_id for rid in ("K-0", "K-1", "K-2")}
    if lost_create:
        assert ids["K-0"] is None and entries["K-0"].extra["id_unknown"]  # there, its id unknown
    else:
        assert ids == {r["external_id"]: r["id"] for r in got}
