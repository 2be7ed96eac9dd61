"""Media Pocket DAM API v2 simulator (assets in projects, media by URL/S3), written from the public docs only."""

import hashlib
import json
import math
import mimetypes
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

#: The sandbox's API key; ASSETFERRY_SANDBOX_KEY_MEDIAPOCKET replaces it (the test suite runs with
#: recognisable fake keys and scans every output for them).
DEMO_API_KEY = os.environ.get("ASSETFERRY_SANDBOX_KEY_MEDIAPOCKET", "sandbox-mediapocket-key")
DEMO_PROJECT_ID = "DEMOprojectSandbox01"  # 20 URL-safe characters, like the vendor's ids
BASE_PATH = "/api/v2"  # clients use http://host:port/api/v2 like https://<customer host>/api/v2
OWNER_EMAIL = "sandbox-user@example.com"  # the user the demo key acts as ("owner" in responses)
ROUTES = (
    "create",  # POST /projects/{project_id}/assets
    "create_unfiled",  # POST /assets (no project)
    "get",  # GET /assets/{id}
    "update",  # PUT /assets/{id}
    "add_media",  # POST /assets/{id}/media
    "remove_media",  # DELETE /assets/{id}/media
    "list_media",  # GET /assets/{id}/media
    "download_url",  # GET /assets/{id}/media/{media_id}/download_url
    "trash",  # POST /assets/{id}/trash_bin
    "restore",  # POST /assets/{id}/restore
)

TITLE_MAX = 255  # attachments.html: "Title is too long (maximum is 255 characters)"
TRASH_RETENTION_SECONDS = 14 * 24 * 3600  # V2.html: trashed assets are deleted after 14 days
INVALID_URL = "not a valid HTTP URL"  # add_media.html / create_asset_to_project.html
_MIME = mimetypes.MimeTypes()  # built-in table only, so results do not depend on /etc/mime.types
_ID_CHARS = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class MediaPocketError(Exception):
    """An error answered with the vendor's body: always {"error": "<message>"} unless `body` is given."""

    def __init__(
        self, status: int, message: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.body, self.headers = status, message, body, headers

    def response(self) -> JSONResponse:
        body = self.body if self.body is not None else {"error": self.message}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _rb(value: Any) -> str:
    """Ruby's `inspect` of a JSON value, as quoted in Apipie's "Invalid parameter" messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_rb(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_rb(k)}=>{_rb(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _missing(name: str) -> MediaPocketError:
    return MediaPocketError(422, f"Missing parameter {name}")


def _invalid(name: str, value: Any, rule: str) -> MediaPocketError:
    return MediaPocketError(422, f"Invalid parameter '{name}' value {_rb(value)}: {rule}")


# Param specs in the doc's order: (name, kind, required). Kinds: str, tags, media_type, url, s3.
CREATE_PARAMS = [
    ("title", "str", True),
    ("description", "str", False),
    ("category", "str", False),
    ("tags", "tags", False),
    ("external_id", "str", False),
    ("media_type", "media_type", False),
    ("url", "url", False),
    ("s3", "s3", False),
]
# create.html (POST /assets) lists the same params minus url/s3; undeclared params are ignored.
CREATE_UNFILED_PARAMS = [p for p in CREATE_PARAMS if p[1] not in ("url", "s3")]
# Doc silent on PUT's params: the asset's metadata fields, all optional; absent ones are kept (partial update).
_METADATA = ("title", "description", "category", "tags", "external_id")
UPDATE_PARAMS = [(n, k, False) for n, k, _ in CREATE_PARAMS if n in _METADATA]
ADD_MEDIA_PARAMS = [("file_url", "str", True), ("filename", "str", True)]


def _check_params(params: dict[str, Any], spec: list[tuple[str, str, bool]]) -> None:
    """Apipie order: presence of every required param first, then each present value in order.
    Apipie treats null like a missing value (params have no allow_nil in the doc)."""
    for name, _, required in spec:
        if required and name not in params:
            raise _missing(name)
    for name, kind, _ in spec:
        if name in params:
            _check_value(name, kind, params[name])


def _check_value(name: str, kind: str, value: Any) -> None:
    if value is None:
        raise _missing(name)
    # Doc: "Must be a String". Apipie's own String check may let numbers through; we are strict so a
    # client never relies on that leniency.
    if kind == "str" and not isinstance(value, str):
        raise _invalid(name, value, "Must be a String")
    if kind == "tags" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _invalid(name, value, "Must be an array of String")
    if kind == "media_type" and value != "article":
        raise _invalid(name, value, "Must be one of: <code>article</code>.")
    if kind in ("url", "s3"):
        if not isinstance(value, dict):
            raise _invalid(name, value, "Must be a Hash")
        _check_params(value, [("file_url" if kind == "url" else "s3_key", "str", True), ("filename", "str", True)])


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _final_type(filename: str) -> str:
    """media_type once processing ends. Doc shows only "image"; video/audio/document are our picks."""
    guessed, _ = _MIME.guess_type(filename, strict=False)
    major = (guessed or "").split("/")[0]
    return major if major in ("image", "video", "audio") else "document"


def _new_id() -> str:
    return secrets.token_urlsafe(15)  # 20 URL-safe characters, e.g. "v_Fa1CZTS56Vkgdoyo4e"


def _timestamp() -> str:
    """UTC ISO-8601 with milliseconds and Z, like the doc's "2023-11-27T09:43:34.166Z"."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass
class _Media:
    id: str
    filename: str
    data: bytes
    md5: str
    source: dict[str, str]  # {"file_url": <url without query>} or {"s3_key": <key>}
    ready_at: float  # clock time when processing completes
    created_date: str


@dataclass
class _Asset:
    id: str
    project_id: str | None
    owner: str
    title: str
    description: str | None
    category: str | None
    tags: list[str]
    external_id: str | None
    base_type: str  # media_type without media: "placeholder" or "article"
    created_date: str
    modification_date: str
    media: _Media | None = None
    deleted: str | None = None
    trashed_at: float | None = None


class _Simulator:
    """All mutable state. Handlers run on the server's single event loop; the only await inside a
    vendor action is the media download, which happens after the asset is stored (as the vendor's
    non-atomic create does) and is followed only by attaching the media to that asset object."""

    def __init__(self, api_keys: dict[str, str], projects: list[str], limits: dict[str, Any], *,
                 s3_base_url: str | None, fetch_timeout: float, max_media_bytes: int,
                 clock: Callable[[], float]) -> None:
        self.api_keys, self.initial_projects, self.initial_limits = api_keys, projects, limits
        self.s3_base_url, self.fetch_timeout, self.max_media_bytes = s3_base_url, fetch_timeout, max_media_bytes
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.projects: dict[str, str] = {p: _timestamp() for p in self.initial_projects}
        self.assets: dict[str, _Asset] = {}
        self.s3_objects: dict[str, bytes] = {}
        self.limits: dict[str, Any] = dict(self.initial_limits)
        self.faults: list[dict[str, Any]] = []
        self.forced_media_failures: list[str] = []  # messages of the next forced media failures
        self.hits: deque[float] = deque()  # times of requests admitted by the optional limiter
        counters = ("requests", "accepted", "throttled", "media_attached", "media_failures", "media_fetches")
        self.stats: dict[str, Any] = dict.fromkeys((*counters, "bytes_fetched"), 0)
        self.by_route = dict.fromkeys(ROUTES, 0)

    def snapshot(self) -> dict[str, Any]:
        self.sweep()
        live = list(self.assets.values())
        return {
            **self.stats,
            "assets": len(live),
            "assets_with_media": sum(a.media is not None for a in live),
            "trashed": sum(a.deleted is not None for a in live),
            "projects": len(self.projects),
            "by_route": dict(self.by_route),
        }

    def sweep(self) -> None:
        """Trashed assets are deleted for good 14 days after trashing (their external_id is freed)."""
        now = self.clock()
        for a in [a for a in self.assets.values() if a.trashed_at is not None]:
            if now - a.trashed_at >= TRASH_RETENTION_SECONDS:
                del self.assets[a.id]

    # ---- admission: auth, optional rate limit, injected faults -----------------------------

    def admit(self, request: Request, route: str) -> tuple[str, MediaPocketError | None]:
        """Returns (owner email, fault to answer after the action or None). Raises when refused."""
        self.stats["requests"] += 1
        self.by_route[route] += 1
        self.sweep()
        # Doc lists 401 "Unauthorized" without a body; we answer the vendor's usual {"error": ...} shape.
        owner = self.api_keys.get(request.headers.get("x-api-key", ""))
        if owner is None:
            raise MediaPocketError(401, "Unauthorized")
        self._throttle()
        after = self._inject_fault(route)
        self.stats["accepted"] += 1
        return owner, after

    def _throttle(self) -> None:
        """No rate limit is documented, so none applies by default. `per_second` / `per_minute`
        (create_app or /_sandbox/limits) enable sliding windows answering 429 + Retry-After (doc silent
        on the body; we use {"error": "Rate limit exceeded"})."""
        now, hits = self.clock(), self.hits
        while hits and hits[0] <= now - 60:
            hits.popleft()
        waits: list[float] = []
        per_second, per_minute = self.limits["per_second"], self.limits["per_minute"]
        recent = [t for t in hits if t > now - 1]
        if per_second is not None and len(recent) >= per_second:
            waits.append(recent[len(recent) - per_second] + 1 - now)
        if per_minute is not None and len(hits) >= per_minute:
            waits.append(hits[len(hits) - per_minute] + 60 - now)
        if waits:
            self.stats["throttled"] += 1
            retry = str(max(1, math.ceil(max(waits))))
            raise MediaPocketError(429, "Rate limit exceeded", headers={"Retry-After": retry})
        hits.append(now)

    def _inject_fault(self, route: str) -> MediaPocketError | None:
        for fault in self.faults:
            if fault["route"] in (None, route):
                fault["count"] -= 1
                self.faults = [f for f in self.faults if f["count"] > 0]
                status = fault["status"]
                headers = {"Retry-After": str(fault["retry_after"])} if fault["retry_after"] is not None else None
                message = "Rate limit exceeded" if status == 429 else f"Injected sandbox fault (HTTP {status})"
                error = MediaPocketError(status, message, body=fault["body"], headers=headers)
                if status == 429:
                    self.stats["throttled"] += 1
                if fault["when"] == "after":
                    return error
                raise error
        return None

    # ---- assets --------------------------------------------------------------------------------

    def find(self, asset_id: str) -> _Asset:
        asset = self.assets.get(asset_id)
        if asset is None:
            raise MediaPocketError(404, "asset not found")
        return asset

    def render(self, a: _Asset) -> dict[str, Any]:
        """The doc's asset object. media_type: placeholder|article -> processing -> image|video|audio|document."""
        m = a.media
        ready = m is not None and self.clock() >= m.ready_at
        media_type = a.base_type if m is None else (_final_type(m.filename) if ready else "processing")
        return {
            "id": a.id,
            "external_id": a.external_id,
            "parent_id": None,
            "project_id": a.project_id,
            "owner": a.owner,
            "title": a.title,
            "description": a.description,
            "category": a.category,
            "tags": list(a.tags),
            # Filled by the vendor's AI when processing completes; the sandbox puts the final type there.
            "ai_tags": [media_type] if ready else [],
            "status": "open",
            "media_type": media_type,
            "original_filename": m.filename if m else None,
            "drop_folder_id": None,
            "md5_sum": m.md5 if ready and m else None,
            "created_date": a.created_date,
            "modification_date": a.modification_date,
            "deleted": a.deleted,
        }

    def check_model(self, title: str | None, external_id: str | None, current: _Asset | None) -> None:
        """ActiveRecord-style validations -> 400 {"error": "<full messages joined by ', '>"} (join: our pick).
        external_id is unique over every stored asset, trashed ones included (they still exist)."""
        errors = []
        if title is not None and not title.strip():
            errors.append("Title can't be blank")  # doc silent; Rails' standard presence message
        if title is not None and len(title) > TITLE_MAX:
            errors.append(f"Title is too long (maximum is {TITLE_MAX} characters)")
        if external_id is not None and any(
            a.external_id == external_id and a is not current for a in self.assets.values()
        ):
            errors.append("External id has already been taken")
        if errors:
            raise MediaPocketError(400, ", ".join(errors))

    def create(self, owner: str, project_id: str | None, params: dict[str, Any]) -> _Asset:
        self.check_model(params["title"], params.get("external_id"), None)
        now = _timestamp()
        asset = _Asset(
            id=_new_id(),
            project_id=project_id,
            owner=owner,
            title=params["title"],
            description=params.get("description"),
            category=params["category"].lower() if "category" in params else None,  # doc: stored lower-cased
            tags=list(params.get("tags", [])),
            external_id=params.get("external_id"),
            base_type="article" if params.get("media_type") == "article" else "placeholder",
            created_date=now,
            modification_date=now,
        )
        self.assets[asset.id] = asset
        return asset

    def update(self, asset: _Asset, params: dict[str, Any]) -> None:
        self.check_model(params.get("title"), params.get("external_id"), asset)
        for key in ("title", "description", "tags", "external_id"):
            if key in params:
                setattr(asset, key, params[key])
        if "category" in params:
            asset.category = params["category"].lower()
        asset.modification_date = _timestamp()

    # ---- media ---------------------------------------------------------------------------------

    async def attach(self, asset: _Asset, source: dict[str, str]) -> str | None:
        """Fetch the bytes named by {"file_url"|"s3_key", "filename"} and make them the asset's media
        (replacing any earlier media). Returns None, or the failure reason. The vendor downloads
        file_url itself; doc silent on download failures: we fetch during the request and report them
        like the documented invalid-URL case."""
        reason, data = None, b""
        if "file_url" in source and not _is_http_url(source["file_url"]):
            reason = INVALID_URL
        elif self.forced_media_failures:
            reason = self.forced_media_failures.pop(0)
        elif "file_url" in source:
            data, reason = await self._download(source["file_url"])
        elif self.s3_base_url:
            data, reason = await self._download(f"{self.s3_base_url.rstrip('/')}/{quote(source['s3_key'])}")
        elif source["s3_key"] in self.s3_objects:
            data = self.s3_objects[source["s3_key"]]
        else:
            reason = "S3 object not found"  # doc silent on how s3_key resolves; see /_sandbox/s3
        if reason is not None:
            self.stats["media_failures"] += 1
            return reason
        if "file_url" in source:
            origin = {"file_url": source["file_url"].split("?", 1)[0]}  # the query may hold a signature
        else:
            origin = {"s3_key": source["s3_key"]}
        now = _timestamp()
        asset.media = _Media(
            _new_id(), source["filename"], data, hashlib.md5(data).hexdigest(), origin,
            self.clock() + self.limits["processing_seconds"], now,
        )
        asset.modification_date = now
        self.stats["media_attached"] += 1
        return None

    async def _download(self, url: str) -> tuple[bytes, str | None]:
        """GET the URL (redirects followed). The URL is never echoed back: presigned URLs carry secrets."""
        self.stats["media_fetches"] += 1
        chunks, size = [], 0
        try:
            async with httpx.AsyncClient(timeout=self.fetch_timeout, follow_redirects=True) as client:
                async with client.stream("GET", url) as r:
                    if r.status_code >= 400:
                        return b"", f"file could not be downloaded (HTTP {r.status_code})"
                    async for chunk in r.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_media_bytes:
                            return b"", f"file is too large (maximum is {self.max_media_bytes} bytes)"
                        chunks.append(chunk)
        except httpx.HTTPError as exc:
            return b"", f"file could not be downloaded ({type(exc).__name__})"
        self.stats["bytes_fetched"] += size
        return b"".join(chunks), None

    def media_entry(self, request: Request, m: _Media) -> dict[str, Any]:
        """Doc names "media and preview URLs" but shows no body; this shape is our pick."""
        ready = self.clock() >= m.ready_at
        content_type, _ = _MIME.guess_type(m.filename, strict=False)
        return {
            "id": m.id,
            "filename": m.filename,
            "content_type": content_type or "application/octet-stream",
            "size": len(m.data),
            "md5_sum": m.md5 if ready else None,
            "status": "ready" if ready else "processing",
            "download_url": self.download_url(request, m),
            "created_date": m.created_date,
        }

    @staticmethod
    def download_url(request: Request, m: _Media) -> str:
        return f"{request.base_url}media-cdn/{m.id}/{quote(m.filename, safe='')}"

    def record(self, a: _Asset) -> dict[str, Any]:
        m = a.media
        media = None if m is None else {
            "id": m.id, "filename": m.filename, "md5": m.md5, "size": len(m.data), "source": dict(m.source),
            "processing": self.clock() < m.ready_at,
        }
        return {
            "id": a.id, "project_id": a.project_id, "external_id": a.external_id, "owner": a.owner,
            "title": a.title, "description": a.description, "category": a.category, "tags": list(a.tags),
            "media_type": self.render(a)["media_type"], "deleted": a.deleted, "media": media,
            "created_date": a.created_date, "modification_date": a.modification_date,
        }


async def _params(request: Request) -> dict[str, Any]:
    """Rails parses the body only when sent as JSON (the doc requires Content-Type: application/json);
    otherwise the params are empty and Apipie reports the first missing one. A JSON body that is not an
    object lands under Rails' "_json" key, so it too leaves the documented params missing."""
    raw = await request.body()
    if "json" not in request.headers.get("content-type", "").lower() or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise MediaPocketError(400, "Invalid JSON in request body") from None  # doc silent on the text
    return body if isinstance(body, dict) else {}


DEMO_CATALOG_PROJECT_ID = "DEMOcatalogProject02"  # the demo manifest's second project (its `parent`)


def demo_job(root: str, demo_dir: Any, stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """For ``assetferry demo mediapocket``: the job's source and destination against this simulator
    at ``root`` (``sandbox/demo/mediapocket.csv``: the 36 bundled images, a third of them in a
    second project that is created here), and the environment variables it reads.

    Media Pocket fetches files by URL, so the demo's local files are staged into a temporary folder
    served over HTTP by a helper server (``staging`` + ``public_base_url``), like a bucket behind a
    CDN; both live until ``stack`` closes."""
    import tempfile

    from assetferry.sandbox.server import (
        running,  # here: sandbox.server imports this module
    )
    from starlette.staticfiles import StaticFiles

    staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="assetferry-demo-staging-"))
    files_root = stack.enter_context(running(StaticFiles(directory=staging)))
    httpx.post(f"{root}/_sandbox/projects", json={"id": DEMO_CATALOG_PROJECT_ID}, timeout=10).raise_for_status()
    job = {
        "source": {"url": str(demo_dir / "mediapocket.csv")},
        "destination": {"vendor": "mediapocket", "url": f"{root}{BASE_PATH}",
                        "credentials": {"api_key": "env:ASSETFERRY_DEMO_KEY"},
                        "settings": {"project_id": DEMO_PROJECT_ID, "staging": f"file://{staging}/",
                                     "public_base_url": files_root, "requests_per_second": 50}},
    }
    return job, {"ASSETFERRY_DEMO_KEY": DEMO_API_KEY}


def create_app(
    *,
    api_keys: dict[str, str] | None = None,
    projects: list[str] | None = None,
    per_second: int | None = None,
    per_minute: int | None = None,
    processing_seconds: float = 1.0,
    s3_base_url: str | None = None,
    fetch_timeout: float = 30.0,
    max_media_bytes: int = 1024**3,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the simulator. Vendor routes under /api/v2 (X-API-KEY auth); the public media download
    stand-in under /media-cdn/; sandbox control routes (no auth, no rate limit) under /_sandbox/.

    api_keys: {key: owner email} (default {DEMO_API_KEY: OWNER_EMAIL}); projects: ids that exist at
    start and after reset (default [DEMO_PROJECT_ID]); per_second/per_minute: optional rate limit
    (None = unlimited, as documented); processing_seconds: time from media attach until media_type
    leaves "processing" and md5_sum is set; s3_base_url: if set, s3_key is fetched from
    <s3_base_url>/<s3_key> over HTTP, else from the sandbox bucket filled by PUT /_sandbox/s3/<key>;
    fetch_timeout / max_media_bytes bound media downloads; clock: monotonic seconds (tests fake it)."""
    limits = {"per_second": per_second, "per_minute": per_minute, "processing_seconds": processing_seconds}
    sim = _Simulator(
        api_keys if api_keys is not None else {DEMO_API_KEY: OWNER_EMAIL},
        list(projects) if projects is not None else [DEMO_PROJECT_ID],
        limits, s3_base_url=s3_base_url, fetch_timeout=fetch_timeout, max_media_bytes=max_media_bytes, clock=clock,
    )
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.simulator = sim
    _install_error_handlers(app)
    _add_vendor_routes(app, sim)
    _add_control_routes(app, sim)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def vendor_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MediaPocketError)
        return exc.response()

    async def http_error(_: Request, exc: Exception) -> Response:
        # Rails routing has no 405: an unknown path or method is a 404.
        return MediaPocketError(404, "Not found").response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        return MediaPocketError(422, f"Invalid request: {exc}").response()

    async def server_error(_: Request, exc: Exception) -> Response:
        return MediaPocketError(500, f"Internal sandbox error: {type(exc).__name__}").response()

    app.add_exception_handler(MediaPocketError, vendor_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


def _add_vendor_routes(app: FastAPI, sim: _Simulator) -> None:
    async def run(request: Request, route: str, action: Callable[[str], Awaitable[Response]]) -> Response:
        """Admit (401/429/"before" fault raise), act, then let a pending "after" fault replace the answer."""
        owner, after = sim.admit(request, route)
        try:
            response = await action(owner)
        except MediaPocketError as exc:
            response = exc.response()
        return after.response() if after is not None else response

    def asset_reply(asset: _Asset) -> JSONResponse:
        return JSONResponse({"asset": sim.render(asset)})  # success is 200 (not 201) in every example

    async def create_with_media(owner: str, project_id: str | None, params: dict[str, Any]) -> Response:
        asset = sim.create(owner, project_id, params)
        source = params.get("url") or params.get("s3")  # doc silent when both are given: url wins
        if source is not None:
            reason = await sim.attach(asset, source)
            if reason is not None:  # non-atomic: the asset stays, without media
                raise MediaPocketError(400, f"Asset {asset.id} created, adding media to asset failed: {reason}")
        return asset_reply(asset)

    @app.post(BASE_PATH + "/projects/{project_id}/assets")
    async def create(request: Request, project_id: str) -> Response:
        """200 {"asset"}; 404 "project not found" is checked before the params (the doc's 404 example
        has no body); then 422 Apipie params; then 400 model errors; then media (400, asset kept)."""

        async def action(owner: str) -> Response:
            params = await _params(request)
            if project_id not in sim.projects:
                raise MediaPocketError(404, "project not found")
            _check_params(params, CREATE_PARAMS)
            return await create_with_media(owner, project_id, params)

        return await run(request, "create", action)

    @app.post(BASE_PATH + "/assets")
    async def create_unfiled(request: Request) -> Response:
        """create.html: an asset outside any project (project_id null); url/s3 are not params here."""

        async def action(owner: str) -> Response:
            params = await _params(request)
            _check_params(params, CREATE_UNFILED_PARAMS)
            params = {k: v for k, v in params.items() if k not in ("url", "s3")}
            return await create_with_media(owner, None, params)

        return await run(request, "create_unfiled", action)

    @app.get(BASE_PATH + "/assets/{asset_id}")
    async def get_asset(request: Request, asset_id: str) -> Response:
        """200 {"asset"} (trashed assets too, with "deleted" set); 404 "asset not found"."""

        async def action(_: str) -> Response:
            return asset_reply(sim.find(asset_id))

        return await run(request, "get", action)

    @app.put(BASE_PATH + "/assets/{asset_id}")
    async def update_asset(request: Request, asset_id: str) -> Response:
        """Partial update (doc silent): only the params sent change. 200 {"asset"}."""

        async def action(_: str) -> Response:
            params = await _params(request)  # read first: no await between lookup and change
            asset = sim.find(asset_id)
            _check_params(params, UPDATE_PARAMS)
            sim.update(asset, params)
            return asset_reply(asset)

        return await run(request, "update", action)

    @app.post(BASE_PATH + "/assets/{asset_id}/media")
    async def add_media(request: Request, asset_id: str) -> Response:
        """add_media.html: {file_url, filename} -> 200 {"ok": "ok"}; bad URL -> 400 "not a valid HTTP URL".
        Media already present is replaced (doc silent). Failed downloads -> 400 {"error": reason}."""

        async def action(_: str) -> Response:
            params = await _params(request)  # read first: no await between lookup and change
            asset = sim.find(asset_id)
            _check_params(params, ADD_MEDIA_PARAMS)
            reason = await sim.attach(asset, {"file_url": params["file_url"], "filename": params["filename"]})
            if reason is not None:
                raise MediaPocketError(400, reason)
            return JSONResponse({"ok": "ok"})

        return await run(request, "add_media", action)

    @app.delete(BASE_PATH + "/assets/{asset_id}/media")
    async def remove_media(request: Request, asset_id: str) -> Response:
        """remove_media.html: 200 {"asset"}; with no media still 200, plus
        "errors": {"error": "No media found on this asset.", "status": 400}."""

        async def action(_: str) -> Response:
            asset = sim.find(asset_id)
            if asset.media is None:
                body = {"asset": sim.render(asset), "errors": {"error": "No media found on this asset.", "status": 400}}
                return JSONResponse(body)
            asset.media = None
            asset.modification_date = _timestamp()
            return asset_reply(asset)

        return await run(request, "remove_media", action)

    @app.get(BASE_PATH + "/assets/{asset_id}/media")
    async def list_media(request: Request, asset_id: str) -> Response:
        """200 {"media": [entry]} (empty list without media); entry shape is our pick (see media_entry)."""

        async def action(_: str) -> Response:
            asset = sim.find(asset_id)
            return JSONResponse({"media": [sim.media_entry(request, asset.media)] if asset.media else []})

        return await run(request, "list_media", action)

    @app.get(BASE_PATH + "/assets/{asset_id}/media/{media_id}/download_url")
    async def download_url(request: Request, asset_id: str, media_id: str) -> Response:
        """200 {"download_url": url} (shape our pick); unknown media -> 404 "media not found"."""

        async def action(_: str) -> Response:
            asset = sim.find(asset_id)
            if asset.media is None or asset.media.id != media_id:
                raise MediaPocketError(404, "media not found")
            return JSONResponse({"download_url": sim.download_url(request, asset.media)})

        return await run(request, "download_url", action)

    @app.post(BASE_PATH + "/assets/{asset_id}/trash_bin")
    async def trash(request: Request, asset_id: str) -> Response:
        """Soft delete: "deleted" gets a timestamp; purged 14 days later. Repeating is a no-op (our pick)."""

        async def action(_: str) -> Response:
            asset = sim.find(asset_id)
            if asset.deleted is None:
                asset.deleted = asset.modification_date = _timestamp()
                asset.trashed_at = sim.clock()
            return asset_reply(asset)

        return await run(request, "trash", action)

    @app.post(BASE_PATH + "/assets/{asset_id}/restore")
    async def restore(request: Request, asset_id: str) -> Response:
        """"deleted" back to null; restoring an asset that is not trashed is a no-op (our pick)."""

        async def action(_: str) -> Response:
            asset = sim.find(asset_id)
            if asset.deleted is not None:
                asset.deleted, asset.trashed_at = None, None
                asset.modification_date = _timestamp()
            return asset_reply(asset)

        return await run(request, "restore", action)

    @app.get("/media-cdn/{media_id}/{filename:path}")
    async def media_cdn(media_id: str, filename: str) -> Response:
        """Public download stand-in (a presigned URL at the vendor): no auth, not counted."""
        for asset in sim.assets.values():
            m = asset.media
            if m is not None and m.id == media_id and m.filename == filename:
                content_type, _ = _MIME.guess_type(m.filename, strict=False)
                return Response(m.data, media_type=content_type or "application/octet-stream")
        raise StarletteHTTPException(404)


async def _control_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise MediaPocketError(400, "The body must be a JSON object.")
    return body


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _add_control_routes(app: FastAPI, sim: _Simulator) -> None:
    """Sandbox-only routes (not part of the vendor API): no auth, no rate limit, not counted."""

    @app.get("/_sandbox/stats")
    async def stats() -> Response:
        return JSONResponse(sim.snapshot())

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        """Clears assets, S3 objects, extra projects, faults, forced media failures, counters, limits."""
        sim.reset()
        return JSONResponse(sim.snapshot())

    @app.get("/_sandbox/records")
    async def records() -> Response:
        """{"records": [asset...], "projects": [id...]}, assets in creation order, trashed ones included."""
        sim.sweep()
        return JSONResponse({"records": [sim.record(a) for a in sim.assets.values()], "projects": list(sim.projects)})

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> Response:
        """{"status": 400-599, "count": n>=1, "retry_after": int|null, "route": null|<route>,
        "when": "before"|"after", "body": optional JSON}: the next n matching admitted vendor requests
        answer that status; "after" first performs and stores the action (the reply is lost)."""
        body = await _control_body(request)
        fault = {
            "status": body.get("status"), "count": body.get("count", 1), "retry_after": body.get("retry_after"),
            "route": body.get("route"), "when": body.get("when", "before"), "body": body.get("body"),
        }
        ok = (
            _is_int(fault["status"], 400) and fault["status"] <= 599 and _is_int(fault["count"], 1)
            and (fault["retry_after"] is None or _is_int(fault["retry_after"], 0))
            and fault["route"] in (None, *ROUTES) and fault["when"] in ("before", "after")
        )
        if not ok:
            raise MediaPocketError(400, f"Need status 400-599, count >= 1, retry_after null|int >= 0, "
                                        f"route null|one of {list(ROUTES)}, when before|after.")
        sim.faults.append(fault)
        return JSONResponse({"faults": sim.faults})

    @app.post("/_sandbox/limits")
    async def limits(request: Request) -> Response:
        """{"per_second": int>=1|null, "per_minute": int>=1|null, "processing_seconds": number>=0};
        keys left out keep their value. Answers all current values."""
        body = await _control_body(request)
        new = {k: body.get(k, sim.limits[k]) for k in sim.limits}
        rate_ok = all(new[k] is None or _is_int(new[k], 1) for k in ("per_second", "per_minute"))
        seconds = new["processing_seconds"]
        if not rate_ok or isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise MediaPocketError(400, "per_second/per_minute: int >= 1 or null; processing_seconds: number >= 0.")
        sim.limits = new
        return JSONResponse(new)

    @app.post("/_sandbox/projects")
    async def projects(request: Request) -> Response:
        """{"id": optional 1-64 chars [A-Za-z0-9_-]} -> 200 {"project": {"id"}, "created": bool}.
        Without id a vendor-like 20-character id is generated. An existing id is not an error."""
        body = await _control_body(request)
        project_id = body.get("id") or _new_id()
        if not isinstance(project_id, str) or not _ID_CHARS.match(project_id):
            raise MediaPocketError(400, "'id' must be 1-64 characters of A-Z a-z 0-9 _ -.")
        created = project_id not in sim.projects
        sim.projects.setdefault(project_id, _timestamp())
        return JSONResponse({"project": {"id": project_id}, "created": created})

    @app.post("/_sandbox/media_failures")
    async def media_failures(request: Request) -> Response:
        """{"count": n>=1, "message": optional str}: the next n media additions (create with url/s3, or
        POST .../media) fail without downloading, with reason `message` (default "file could not be
        downloaded"). An invalid URL still fails with "not a valid HTTP URL" and does not use one up."""
        body = await _control_body(request)
        count, message = body.get("count", 1), body.get("message", "file could not be downloaded")
        if not _is_int(count, 1) or not isinstance(message, str) or not message:
            raise MediaPocketError(400, "'count' must be an int >= 1 and 'message' a non-empty string.")
        sim.forced_media_failures += [message] * count
        return JSONResponse({"pending": len(sim.forced_media_failures)})

    @app.put("/_sandbox/s3/{key:path}")
    async def put_s3_object(request: Request, key: str) -> Response:
        """Raw body -> object in the sandbox bucket that `s3: {s3_key}` reads (unless s3_base_url is set)."""
        data = await request.body()
        sim.s3_objects[key] = data
        return JSONResponse({"key": key, "size": len(data), "md5": hashlib.md5(data).hexdigest()})

    @app.get("/_sandbox/s3/{key:path}")
    async def get_s3_object(key: str) -> Response:
        """Serves a sandbox bucket object over HTTP, so it can also be given as a url.file_url."""
        if key not in sim.s3_objects:
            raise StarletteHTTPException(404)
        return Response(sim.s3_objects[key], media_type="application/octet-stream")
