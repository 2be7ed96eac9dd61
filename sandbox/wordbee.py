"""Wordbee Translator API2 segment-asset simulator (auth token, media upload, assets), written from the vendor's public docs only."""

import asyncio
import hashlib
import json
import mimetypes
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

DEMO_ACCOUNT_ID = "sandbox"
#: The sandbox's API key; ASSETFERRY_SANDBOX_KEY_WORDBEE replaces it (the test suite runs with
#: recognisable fake keys and scans every output for them).
DEMO_API_KEY = os.environ.get("ASSETFERRY_SANDBOX_KEY_WORDBEE", "sandbox-api2-key")
DEMO_PROJECT_ID = "7214"
DEMO_SCOPE = "pr7214"
DEMO_DOCUMENT_ID = "19641"
DEMO_SEGMENT_IDS = "27665601,27665602,27665603"
BASE_PATH = "/api"  # doc: "The API 2 endpoint is your Wordbee Translator URL + /api"
ROUTES = ("auth", "logout", "media", "attach", "list", "download", "delete")

HOUR = 3600.0
_TICKS_AT_EPOCH = 621_355_968_000_000_000  # .NET ticks (100 ns since 0001-01-01) at 1970-01-01
_MIME = mimetypes.MimeTypes()  # built-in table only, so results do not depend on /etc/mime.types
_SCOPE = re.compile(r"^(pr|jbs|jbc)([0-9]{1,9})$", re.IGNORECASE)  # doc: pr{projectid}, jbs{jobid}, jbc{jobid}
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
_BAD_PATH_CHARS = re.compile(r'[<>:"|?*\x00-\x1f]')  # Windows-reserved; the store is a Windows-style folder tree

TOKEN_INVALID_TITLE = "Token invalid or expired."
NOT_AUTHENTICATED = "API construct session from token failed with error: Not authenticated"
INVALID_KEY_TITLE = "Invalid private key."
FILE_NOT_FOUND_TITLE = "The requested file does not exist."


class WordbeeError(Exception):
    """An error answered with Wordbee's envelope (doc "Error handling and code"):
    {"error": {"operation", "date", "title", "details", "errorurl", "messages"}, "reason"}; `reason`
    mirrors `error.title` unless given. `body` replaces the envelope (429 and injected faults)."""

    def __init__(
        self,
        title: str,
        *,
        status: int = 400,
        details: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        reason: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.title, self.status, self.details, self.messages = title, status, details, messages or []
        self.reason, self.body, self.headers = reason or title, body, headers

    def response(self, date: str) -> JSONResponse:
        body = self.body
        if body is None:
            error = {"operation": None, "date": date, "title": self.title, "details": self.details,
                     "errorurl": None, "messages": self.messages}
            body = {"error": error, "reason": self.reason}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _token_invalid() -> WordbeeError:
    """Doc: an expired or invalid token is a 400 (not 401) with exactly this body."""
    message = {"title": "Not authenticated", "details": NOT_AUTHENTICATED, "errorurl": None}
    return WordbeeError(TOKEN_INVALID_TITLE, details=TOKEN_INVALID_TITLE, messages=[message],
                        reason=f"Not authenticated - {NOT_AUTHENTICATED}")


def _timespan(seconds: float) -> str:
    """.NET TimeSpan text as in the doc's "per 01:00:00"."""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _throttled(limit: int, period: float) -> WordbeeError:
    """Doc: 429 with this body and no Retry-After (callers are told to wait >= 10 s)."""
    message = f"Requests throttled. Maximum allowed {limit} per {_timespan(period)}."
    return WordbeeError(message, status=429, body={"error": {"type": "Throttling error", "message": message}, "reason": message})


def _invalid(param: str, problem: str) -> WordbeeError:
    """Doc-style parameter error, e.g. "Invalid parameter 'src': Invalid source locale"."""
    return WordbeeError(f"Invalid parameter '{param}': {problem}")


def _micros(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def _iso(micros: int) -> str:
    """UTC ISO-8601 with 7 fractional digits and Z, like the doc's "2025-07-27T15:58:53.4687698Z"."""
    whole = datetime.fromtimestamp(micros // 1_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{micros % 1_000_000:06d}0Z"


def _normalise_path(value: str, param: str) -> str:
    """Doc: "Path separators are automatically normalized". Stored with backslashes, no leading or
    trailing separator (doc list example: "public\\views" for "/public/views"); ".." is refused
    (doc silent: a real server must not let a path leave the segment folder)."""
    parts = [p for p in re.split(r"[\\/]+", value.strip()) if p not in ("", ".")]
    if any(p == ".." or _BAD_PATH_CHARS.search(p) for p in parts):
        raise _invalid(param, 'The path must stay inside the asset folder and not contain < > : " | ? * characters.')
    return "\\".join(parts)


def _split_name(name: str) -> tuple[str, str]:
    """("sub\\dir", "img.png") for "sub/dir/img.png": the doc lets a path ride in the file name."""
    head, _, base = re.sub(r"[\\/]+", "/", name.strip()).rpartition("/")
    if not base or base in (".", "..") or _BAD_PATH_CHARS.search(base):
        raise _invalid("filename", 'A file name is required; it may not contain < > : " | ? * characters.')
    return _normalise_path(head, "filename"), base


@dataclass
class _Session:
    account: str
    last_used: float


@dataclass
class _Media:
    """A file uploaded through media/upload, waiting for an API method to consume its token."""

    name: str  # as given, possibly with a path ("subfolder/image.jpg")
    data: bytes
    uploaded: int  # microseconds since the epoch; becomes the asset's modifiedDate
    used: bool = False


@dataclass
class _Asset:
    project: int
    document: int
    segment: int
    locale: str | None
    relative_path: str  # backslash-separated, "" at the segment root
    name: str
    content_type: str
    data: bytes
    created: int  # microseconds; kept on overwrite
    modified: int  # microseconds; the uploaded file's time (doc example: modifiedDate < createdDate)
    overwrites: int = 0

    @property
    def key(self) -> tuple[int, str | None, str, str]:
        return (self.segment, self.locale, self.relative_path, self.name)


@dataclass
class _Admission:
    account: str | None
    fault: dict[str, Any] | None  # an injected fault to answer before or after the work


class _Simulator:
    """All mutable state. Handlers run on the server's single event loop and never await between
    reading and changing state, so no lock is needed."""

    def __init__(
        self,
        accounts: dict[str, list[str]],
        projects: dict[int, dict[int, int]],
        limits: dict[str, Any],
        single_use_file_tokens: bool,
        clock: Callable[[], float],
    ) -> None:
        self.accounts, self.initial_projects, self.initial_limits = accounts, projects, limits
        self.single_use, self.clock = single_use_file_tokens, clock
        self.reset()

    def reset(self) -> None:
        self.limits = dict(self.initial_limits)
        self.segments = {s: (p, d) for p, segs in self.initial_projects.items() for s, d in segs.items()}
        self.projects = set(self.initial_projects)
        self.next_document = 50001  # documents created by /_sandbox/segments without an explicit id
        self.sessions: dict[str, _Session] = {}
        self.media: dict[str, _Media] = {}
        self.assets: dict[tuple[int, str | None, str, str], _Asset] = {}
        self.hits: dict[str, deque[float]] = {}
        self.faults: list[dict[str, Any]] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "accepted", "throttled", "auth_tokens_issued", "tokens_refused", "uploads",
             "bytes_uploaded", "file_tokens_issued", "file_tokens_used", "attaches", "overwrites",
             "deleted"), 0)
        self.by_route = dict.fromkeys(ROUTES, 0)
        self.held = 0  # requests an injected fault with a "delay" is holding right now

    def snapshot(self) -> dict[str, Any]:
        """Counters; ``sessions``: auth tokens issued and neither released nor refused yet
        (a token that only idled out still counts until it is presented); ``held``: requests
        held by a fault's ``delay`` right now."""
        return {**self.stats, "assets": len(self.assets), "sessions": len(self.sessions), "held": self.held,
                "by_route": dict(self.by_route)}

    def now_iso(self) -> str:
        return _iso(_micros(self.clock()))

    def error_response(self, exc: WordbeeError) -> JSONResponse:
        return exc.response(self.now_iso())

    # ---- admission: token, hourly allowance, injected faults ---------------------------------

    def admit(self, request: Request, route: str, credentials: dict[str, Any] | None) -> _Admission:
        """auth: check accountid/key. Others: X-Auth-Token + X-Auth-AccountId, then the allowance
        (auth calls are not counted, doc). Then faults: a "before" fault is answered by the
        endpoint (after its delay) and the call is not counted as accepted. Raises WordbeeError
        when refused."""
        if route == "auth":
            account = self._check_key(credentials or {})
        else:
            account = self._authenticate(request)
            if route != "logout":
                self._throttle(account)
        fault = self._take_fault(route)
        if fault is None or fault["when"] != "before":
            self.stats["accepted"] += 1
        return _Admission(account, fault)

    def _check_key(self, credentials: dict[str, Any]) -> str:
        """Doc: a bad key answers 400 "Invalid private key."; doc silent on an unknown account id,
        which gets the same answer (nothing reveals which half was wrong)."""
        account, key = credentials.get("accountid"), credentials.get("key")
        if not isinstance(account, str) or not isinstance(key, str) or key not in self.accounts.get(account, []):
            raise WordbeeError(INVALID_KEY_TITLE)
        return account

    def _authenticate(self, request: Request) -> str:
        """Both headers are required; the token belongs to one account id. Idle expiry is sliding:
        every authenticated call restarts the inactivity period (doc: 30 minutes)."""
        token = request.headers.get("x-auth-token", "").strip().upper()
        account = request.headers.get("x-auth-accountid", "").strip()
        session, now = self.sessions.get(token), self.clock()
        if session is not None and now - session.last_used >= self.limits["token_idle_seconds"]:
            del self.sessions[token]
            session = None
        if session is None or session.account != account:
            self.stats["tokens_refused"] += 1
            raise _token_invalid()
        session.last_used = now
        return account

    def _throttle(self, account: str) -> None:
        """Sliding windows per account over admitted calls: per_hour in any 3600 s (documented
        hourly allowance) and, when set, per_second in any 1 s (doc silent; off by default)."""
        now, hits = self.clock(), self.hits.setdefault(account, deque())
        while hits and hits[0] <= now - HOUR:
            hits.popleft()
        per_hour, per_second = self.limits["per_hour"], self.limits["per_second"]
        refusal = None
        if len(hits) >= per_hour:
            refusal = _throttled(per_hour, HOUR)
        elif per_second is not None and sum(1 for t in hits if t > now - 1) >= per_second:
            refusal = _throttled(per_second, 1)
        if refusal is not None:
            self.stats["throttled"] += 1
            raise refusal
        hits.append(now)

    def _take_fault(self, route: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault["route"] in (None, route):
                fault["count"] -= 1
                self.faults = [f for f in self.faults if f["count"] > 0]
                return fault
        return None

    def fault_error(self, fault: dict[str, Any]) -> WordbeeError:
        status, retry_after = fault["status"], fault["retry_after"]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if status == 429:
            self.stats["throttled"] += 1
        if fault.get("body") is not None:
            return WordbeeError("fault", status=status, body=fault["body"], headers=headers)
        if status == 429:
            error = _throttled(self.limits["per_hour"], HOUR)
            error.headers = headers
            return error
        return WordbeeError(f"Injected sandbox fault (HTTP {status}).", status=status, headers=headers)

    # ---- vendor state -------------------------------------------------------------------------

    def target(self, request: Request) -> tuple[int, int, int]:
        """(project, document, segment) from {segmentid} and ?scope=pr{projectid}. Doc silent on
        the refusals; Wordbee's default error status is 400, used for all of them."""
        segment = self.segment_id(request.path_params["segmentid"], "segmentid")
        project = self.project_of_scope(request.query_params.get("scope"))
        where = self.segments.get(segment)
        if where is None or where[0] != project:
            raise _invalid("segmentid", f"The segment {segment} does not exist in project {project} or you do not have access to it.")
        return project, where[1], segment

    def project_of_scope(self, scope: str | None) -> int:
        match = _SCOPE.match((scope or "").strip())
        if match is None:
            raise _invalid("scope", "Expected pr{projectid}, jbs{jobid} or jbc{jobid}, e.g. pr7214.")
        kind, number = match.group(1).lower(), int(match.group(2))
        if kind != "pr":  # the sandbox models projects only; no job exists
            raise _invalid("scope", f"The job {number} does not exist or you do not have access to it.")
        if number not in self.projects:
            raise _invalid("scope", f"The project {number} does not exist or you do not have access to it.")
        return number

    @staticmethod
    def segment_id(value: str, param: str) -> int:
        if not re.fullmatch(r"[0-9]{1,10}", value.strip()):
            raise _invalid(param, f"'{value}' is not a valid segment id.")
        return int(value)

    def render(self, asset: _Asset, request: Request) -> dict[str, Any]:
        """The doc's asset object. downloadUrl: locale (if any), scope, filename, relativePath (if
        any; doc silent on its place), v = modifiedDate in .NET ticks (as in the doc example)."""
        query: dict[str, Any] = {"locale": asset.locale} if asset.locale else {}
        query.update(scope=f"pr{asset.project}", filename=asset.name)
        if asset.relative_path:
            query["relativePath"] = asset.relative_path
        query["v"] = _TICKS_AT_EPOCH + asset.modified * 10
        url = f"{request.base_url}{BASE_PATH.lstrip('/')}/resources/assets/{asset.segment}?{urlencode(query, quote_via=quote)}"
        return {
            "projectId": asset.project,
            "documentId": asset.document,
            "segmentId": asset.segment,
            "locale": asset.locale,
            "relativePath": asset.relative_path,
            "name": asset.name,
            "size": len(asset.data),
            "contentType": asset.content_type,
            "createdDate": _iso(asset.created),
            "modifiedDate": _iso(asset.modified),
            "downloadUrl": url,
        }

    def record(self, asset: _Asset) -> dict[str, Any]:
        return {
            "project": asset.project,
            "document": asset.document,
            "segment": asset.segment,
            "locale": asset.locale,
            "relativePath": asset.relative_path,
            "name": asset.name,
            "contentType": asset.content_type,
            "size": len(asset.data),
            "md5": hashlib.md5(asset.data).hexdigest(),
            "createdDate": _iso(asset.created),
            "modifiedDate": _iso(asset.modified),
            "overwrites": asset.overwrites,
        }

    def attach(self, project: int, document: int, segment: int, body: dict[str, Any]) -> _Asset:
        """Consume the file token and store the file. Same segment + locale + relativePath + name
        overwrites the stored file: createdDate kept, modifiedDate/size/bytes replaced."""
        filetoken, locale, relative = body.get("filetoken"), body.get("locale"), body.get("relativePath")
        if not isinstance(filetoken, str) or not filetoken.strip():
            raise _invalid("filetoken", "A file token from media/upload is required.")
        if (locale is not None and not isinstance(locale, str)) or (locale and not _LOCALE.match(locale)):
            raise _invalid("locale", f"'{locale}' is not a valid language code.")
        if relative is not None and not isinstance(relative, str):
            raise _invalid("relativePath", "Must be a string.")
        media = self.media.get(filetoken.strip().lower())
        # Doc silent on reuse: the uploaded temporary file is moved into the reference material, so
        # a second use of the token finds nothing (configurable: single_use_file_tokens).
        if media is None or (media.used and self.single_use):
            raise _invalid("filetoken", "The file token is invalid, expired or was already used.")
        path_in_name, name = _split_name(media.name)
        # Doc: relativePath takes precedence over a path in the file name; ""/null means "not given".
        rel = _normalise_path(relative, "relativePath") if relative else path_in_name
        key, data = (segment, locale or None, rel, name), media.data
        content_type = _MIME.guess_type(name, strict=False)[0] or "application/octet-stream"
        asset = self.assets.get(key)
        if asset is None:
            asset = _Asset(project, document, segment, locale or None, rel, name, content_type, data,
                           created=_micros(self.clock()), modified=media.uploaded)
            self.assets[key] = asset
        else:
            asset.data, asset.content_type, asset.modified = data, content_type, media.uploaded
            asset.overwrites += 1
            self.stats["overwrites"] += 1
        media.used = True
        if self.single_use:
            media.data = b""
        self.stats["attaches"] += 1
        self.stats["file_tokens_used"] += 1
        return asset

    def find(self, segment: int, query: Any) -> list[_Asset]:
        """Assets of a segment matching ?filename[&locale][&relativePath] (no filename: all of them)."""
        filename = query.get("filename")
        if not filename:
            return [a for a in self.assets.values() if a.segment == segment]
        path_in_name, name = _split_name(filename)
        relative = query.get("relativePath")
        rel = _normalise_path(relative, "relativePath") if relative else path_in_name
        asset = self.assets.get((segment, query.get("locale") or None, rel, name))
        return [asset] if asset else []

    def add_segments(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create/extend a project with segments; a segment id is unique across projects."""
        project, default_doc, items = body.get("project"), body.get("document"), body.get("segments")
        if not _positive_int(project) or not (default_doc is None or _positive_int(default_doc)):
            raise WordbeeError("'project' (and 'document' if given) must be ints >= 1.")
        if not isinstance(items, list):
            raise WordbeeError("'segments' must be a list of ints or {\"id\": int, \"document\": int}.")
        if default_doc is None:
            default_doc, self.next_document = self.next_document, self.next_document + 1
        planned: dict[int, int] = {}
        for item in items:
            seg, doc = (item, default_doc) if not isinstance(item, dict) else (item.get("id"), item.get("document", default_doc))
            if not _positive_int(seg) or not _positive_int(doc):
                raise WordbeeError(f"Bad segment entry {json.dumps(item)}.")
            owner = self.segments.get(seg)
            if owner is not None and owner[0] != project:
                raise WordbeeError(f"Segment {seg} already belongs to project {owner[0]}.")
            planned[seg] = doc
        self.projects.add(project)
        self.segments.update({s: (project, d) for s, d in planned.items()})
        return {"project": project, "segments": [{"segment": s, "document": d} for s, d in planned.items()]}


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise WordbeeError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise WordbeeError("The request body must be a JSON object.")
    return body


async def _read_capped(request: Request, cap: int, too_large: WordbeeError) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _multipart_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(file name, bytes) of the first file part of a multipart/form-data body."""
    match = re.search(r'boundary="?([^";,]+)"?', content_type, re.IGNORECASE)
    if match is None:
        raise WordbeeError("The multipart upload has no boundary.")
    for chunk in body.split(b"--" + match.group(1).strip().encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        disposition = next((h for h in head.decode("utf-8", "replace").split("\r\n")
                            if h.lower().startswith("content-disposition:")), "")
        name = re.search(r"filename\*=utf-8''([^;]+)", disposition, re.IGNORECASE)
        plain = re.search(r'filename="((?:[^"\\]|\\.)*)"|filename=([^;\s]+)', disposition, re.IGNORECASE)
        if sep and (name or plain):
            if name:
                filename = unquote(name.group(1))
            else:
                filename = (plain.group(1) if plain.group(1) is not None else plain.group(2)).replace("%22", '"')
            return filename, data[:-2] if data.endswith(b"\r\n") else data
    raise WordbeeError("No file was found in the multipart upload.")


Work = Callable[[Request, _Admission], Awaitable[Response]]


def create_app(
    *,
    accounts: dict[str, str | list[str]] | None = None,
    projects: dict[int, dict[int, int]] | None = None,
    per_hour: int = 1000,
    per_second: int | None = None,
    token_idle_seconds: float = 1800,
    max_upload_bytes: int = 100 * 1024 * 1024,
    single_use_file_tokens: bool = True,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the simulator. Vendor routes under /api/ (X-Auth-Token + X-Auth-AccountId), sandbox
    control routes (no auth, no limits, not counted) under /_sandbox/. `accounts` maps account id
    -> API key(s); `projects` maps project id -> {segment id: document id}; `clock` returns epoch
    seconds and drives token expiry, the allowance windows and every date the simulator writes."""
    if accounts is None:
        accounts = {DEMO_ACCOUNT_ID: DEMO_API_KEY}
    if projects is None:
        projects = {int(DEMO_PROJECT_ID): {int(s): int(DEMO_DOCUMENT_ID) for s in DEMO_SEGMENT_IDS.split(",")}}
    keys = {a: [k] if isinstance(k, str) else list(k) for a, k in accounts.items()}
    limits = {"per_hour": per_hour, "per_second": per_second, "token_idle_seconds": token_idle_seconds,
              "max_upload_bytes": max_upload_bytes}
    sim = _Simulator(keys, projects, limits, single_use_file_tokens, clock)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.simulator = sim
    _install_error_handlers(app, sim)
    _add_vendor_routes(app, sim)
    _add_control_routes(app, sim)
    return app


def _install_error_handlers(app: FastAPI, sim: _Simulator) -> None:
    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        titles = {404: "The requested resource does not exist.", 405: "The HTTP method is not supported by this resource."}
        return sim.error_response(WordbeeError(titles.get(exc.status_code, str(exc.detail)), status=exc.status_code))

    async def server_error(_: Request, exc: Exception) -> Response:
        return sim.error_response(WordbeeError(f"Internal sandbox error: {exc!r}", status=500))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)


async def _hold(sim: _Simulator, request: Request, seconds: float | None) -> None:
    """A fault's ``delay``: keep the request open for ``seconds``, or until the client hangs up
    (a test can then kill the client between two steps at a moment it chooses)."""
    if not seconds:
        return
    sim.held += 1
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not await request.is_disconnected():
            await asyncio.sleep(0.02)
    finally:
        sim.held -= 1


def _endpoint(sim: _Simulator, route: str, work: Work) -> Callable[[Request], Awaitable[Response]]:
    """Count, admit, run the vendor work. An injected "before" fault answers instead of the work;
    an "after" fault replaces the reply once the work is done; either after its ``delay``."""

    async def endpoint(request: Request) -> Response:
        sim.stats["requests"] += 1
        sim.by_route[route] += 1
        admission = None
        try:
            credentials = await _json_object(request) if route == "auth" else None
            admission = sim.admit(request, route, credentials)
            fault = admission.fault
            if fault is not None and fault["when"] == "before":
                await _hold(sim, request, fault["delay"])
                raise sim.fault_error(fault)
            response = await work(request, admission)
        except WordbeeError as exc:
            response = sim.error_response(exc)
        if admission is not None and admission.fault is not None and admission.fault["when"] == "after":
            await _hold(sim, request, admission.fault["delay"])
            return sim.error_response(sim.fault_error(admission.fault))
        return response

    return endpoint


def _add_vendor_routes(app: FastAPI, sim: _Simulator) -> None:
    async def issue_token(request: Request, admission: _Admission) -> Response:
        """POST /api/auth/token {"accountid", "key"} -> the token as a JSON string (doc: "returns token (string)")."""
        token = str(uuid.uuid4()).upper()  # doc example: 61094C3A-F44F-4D5C-AD34-1D5185EFFE94
        sim.sessions[token] = _Session(str(admission.account), sim.clock())
        sim.stats["auth_tokens_issued"] += 1
        return JSONResponse(token)

    async def release_token(request: Request, admission: _Admission) -> Response:
        """DELETE /api/auth/token: invalidates the token. Doc silent on the reply: 200, empty body."""
        sim.sessions.pop(request.headers.get("x-auth-token", "").strip().upper(), None)
        return Response(status_code=200)

    async def media_upload(request: Request, admission: _Admission) -> Response:
        """POST /api/media/upload?filename=&maxsize=, multipart/form-data only ->
        {"result": {"token", "name"}}. filename overrides the multipart file name."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise WordbeeError("The request must be a multipart/form-data upload (binary bodies are not accepted).")
        maxsize_text = request.query_params.get("maxsize")
        if maxsize_text is not None and not maxsize_text.strip().isdigit():
            raise _invalid("maxsize", "Must be an integer number of bytes.")
        cap = sim.limits["max_upload_bytes"]
        if maxsize_text is not None:
            cap = min(cap, int(maxsize_text))
        too_large = WordbeeError(f"The file is too large. The maximum allowed size is {cap} bytes.")
        body = await _read_capped(request, sim.limits["max_upload_bytes"] + 64 * 1024, too_large)
        part_name, data = _multipart_file(content_type, body)
        name = (request.query_params.get("filename") or part_name).strip()
        _, base = _split_name(name)  # refuse an empty or unusable name now, not at attach time
        if not re.fullmatch(r".+\.[^.\s]+", base):
            # vendor notes (help.wordbee.com/api2/media-upload): the name must carry an extension
            raise _invalid("filename", f"The file name '{base}' has no extension.")
        if len(data) > cap:
            raise too_large
        token = uuid.uuid4().hex  # doc example: "74fac397d6314cf4a2958f8318f3a9a4"
        sim.media[token] = _Media(name, data, _micros(sim.clock()))
        sim.stats["uploads"] += 1
        sim.stats["bytes_uploaded"] += len(data)
        sim.stats["file_tokens_issued"] += 1
        return JSONResponse({"result": {"token": token, "name": name}})

    async def attach_asset(request: Request, admission: _Admission) -> Response:
        """POST /api/resources/assets/{segmentid}?scope=pr{project} {"filetoken", "locale"?,
        "relativePath"?} -> 200 + asset object."""
        body = await _json_object(request)
        project, document, segment = sim.target(request)
        return JSONResponse(sim.render(sim.attach(project, document, segment, body), request))

    async def list_segment(request: Request, admission: _Admission) -> Response:
        """GET /api/resources/assets/{segmentid}/list?scope= -> JSON array of asset objects."""
        _, _, segment = sim.target(request)
        return JSONResponse([sim.render(a, request) for a in sim.find(segment, {})])

    async def list_many(request: Request, admission: _Admission) -> Response:
        """GET /api/resources/assets/list?scope=&segmentIds=a,b -> one array for all segments.
        Doc silent on unknown ids: refused like the single-segment routes."""
        project = sim.project_of_scope(request.query_params.get("scope"))
        raw = request.query_params.get("segmentIds", "")
        if not raw.strip():
            raise _invalid("segmentIds", "A comma-separated list of segment ids is required.")
        ids = list(dict.fromkeys(sim.segment_id(part, "segmentIds") for part in raw.split(",")))
        for seg in ids:
            if sim.segments.get(seg, (None,))[0] != project:
                raise _invalid("segmentIds", f"The segment {seg} does not exist in project {project} or you do not have access to it.")
        return JSONResponse([sim.render(a, request) for seg in ids for a in sim.find(seg, {})])

    async def download(request: Request, admission: _Admission) -> Response:
        """GET /api/resources/assets/{segmentid}?scope&filename[&locale][&relativePath] -> bytes.
        `v` is accepted and ignored (cache buster)."""
        _, _, segment = sim.target(request)
        if not request.query_params.get("filename"):
            raise _invalid("filename", "The name of the asset file is required.")
        found = sim.find(segment, request.query_params)
        if not found:
            raise WordbeeError(FILE_NOT_FOUND_TITLE)  # the doc's own example of a missing file
        asset = found[0]
        fallback = asset.name.encode("ascii", "replace").decode().replace('"', "_")  # headers are latin-1
        disposition = f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(asset.name, safe='')}"
        return Response(asset.data, media_type=asset.content_type, headers={"Content-Disposition": disposition})

    async def delete(request: Request, admission: _Admission) -> Response:
        """DELETE /api/resources/assets/{segmentid}?scope[&filename&locale&relativePath] -> 200,
        empty body; without filename every asset of the segment goes. Missing asset: still 200 (doc)."""
        _, _, segment = sim.target(request)
        for asset in sim.find(segment, request.query_params):
            del sim.assets[asset.key]
            sim.stats["deleted"] += 1
        return Response(status_code=200)

    assets = BASE_PATH + "/resources/assets"
    table: list[tuple[str, str, str, Work]] = [
        ("POST", BASE_PATH + "/auth/token", "auth", issue_token),
        ("DELETE", BASE_PATH + "/auth/token", "logout", release_token),
        ("POST", BASE_PATH + "/media/upload", "media", media_upload),
        ("GET", assets + "/list", "list", list_many),  # before {segmentid}, which would match "list"
        ("GET", assets + "/{segmentid}/list", "list", list_segment),
        ("POST", assets + "/{segmentid}", "attach", attach_asset),
        ("GET", assets + "/{segmentid}", "download", download),
        ("DELETE", assets + "/{segmentid}", "delete", delete),
    ]
    for method, path, route, work in table:
        app.add_api_route(path, _endpoint(sim, route, work), methods=[method], name=f"{route}:{method}")


def _add_control_routes(app: FastAPI, sim: _Simulator) -> None:
    """Sandbox-only routes (not part of the vendor API): no auth, no allowance, not counted."""

    def refuse(message: str) -> Response:
        return sim.error_response(WordbeeError(message))

    @app.get("/_sandbox/stats")
    async def stats() -> Response:
        return JSONResponse(sim.snapshot())

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        """Clears assets, media, tokens, counters and faults; restores initial limits and segments."""
        sim.reset()
        return JSONResponse(sim.snapshot())

    @app.get("/_sandbox/records")
    async def records() -> Response:
        """{"records": [asset...], "file_tokens": {"issued", "used"}, "segments": [...]}."""
        return JSONResponse({
            "records": [sim.record(a) for a in sim.assets.values()],
            "file_tokens": {"issued": sim.stats["file_tokens_issued"], "used": sim.stats["file_tokens_used"]},
            "segments": [{"project": p, "document": d, "segment": s} for s, (p, d) in sim.segments.items()],
        })

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> Response:
        """{"status": 400-599, "count": n>=1, "retry_after": int|null, "route": null|<route>,
        "when": "before"|"after", "body": optional JSON, "delay": seconds|null}: the next n
        matching admitted vendor calls answer `status` (before: nothing done; after: done, then
        the error), after holding the request `delay` seconds or until the client disconnects."""
        try:
            body = await _json_object(request)
        except WordbeeError as exc:
            return sim.error_response(exc)
        status, count, retry_after = body.get("status"), body.get("count", 1), body.get("retry_after")
        route, when, delay = body.get("route"), body.get("when", "before"), body.get("delay")
        if not (_positive_int(status) and 400 <= status <= 599 and _positive_int(count)):
            return refuse("'status' must be an int 400-599 and 'count' an int >= 1.")
        if not (retry_after is None or (isinstance(retry_after, int) and retry_after >= 0)):
            return refuse("'retry_after' must be null or an int >= 0.")
        if route not in (None, *ROUTES) or when not in ("before", "after"):
            return refuse(f"'route' must be null or one of {list(ROUTES)}; 'when' 'before' or 'after'.")
        if not (delay is None or (isinstance(delay, int | float) and not isinstance(delay, bool) and 0 <= delay <= 600)):
            return refuse("'delay' must be null or a number of seconds 0-600.")
        sim.faults.append({"status": status, "count": count, "retry_after": retry_after, "route": route,
                           "when": when, "body": body.get("body"), "delay": delay})
        return JSONResponse({"faults": sim.faults})

    @app.post("/_sandbox/limits")
    async def limits(request: Request) -> Response:
        """Keys (all optional): "per_hour": int >= 1; "per_second": int >= 1 or null (off);
        "token_idle_seconds": number > 0; "max_upload_bytes": int >= 1. Answers all current values."""
        try:
            body = await _json_object(request)
        except WordbeeError as exc:
            return sim.error_response(exc)
        values = {k: body.get(k, v) for k, v in sim.limits.items()}
        ok = _positive_int(values["per_hour"]) and _positive_int(values["max_upload_bytes"])
        ok = ok and (values["per_second"] is None or _positive_int(values["per_second"]))
        idle = values["token_idle_seconds"]
        if not ok or isinstance(idle, bool) or not isinstance(idle, int | float) or idle <= 0:
            return refuse("per_hour/max_upload_bytes: ints >= 1; per_second: int >= 1 or null; token_idle_seconds: > 0.")
        sim.limits = values
        return JSONResponse(values)

    @app.post("/_sandbox/expire_tokens")
    async def expire_tokens() -> Response:
        """Every issued auth token stops working now (as after 30 idle minutes)."""
        expired = len(sim.sessions)
        sim.sessions.clear()
        return JSONResponse({"expired": expired})

    @app.post("/_sandbox/segments")
    async def segments(request: Request) -> Response:
        """{"project": int, "document": int?, "segments": [int | {"id": int, "document": int}]}:
        make a project and its segments exist. Without "document" a new document id is allocated."""
        try:
            return JSONResponse(sim.add_segments(await _json_object(request)))
        except WordbeeError as exc:
            return sim.error_response(exc)


def demo_job(root: str, demo_dir: Any, stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """For ``assetferry demo wordbee``: the job's source and destination against this simulator
    at ``root`` (36 bundled images attached to the three demo segments of project 7214, in en/de/fr
    subfolders), and the environment variables holding the sandbox-only credentials."""
    job = {
        "source": {"url": str(demo_dir / "wordbee.csv")},
        "destination": {"vendor": "wordbee", "url": f"{root}{BASE_PATH}",
                        "credentials": {"account_id": "env:ASSETFERRY_DEMO_WORDBEE_ACCOUNT",
                                        "api_key": "env:ASSETFERRY_DEMO_WORDBEE_KEY"},
                        "settings": {"project_id": int(DEMO_PROJECT_ID)}},
    }
    return job, {"ASSETFERRY_DEMO_WORDBEE_ACCOUNT": DEMO_ACCOUNT_ID, "ASSETFERRY_DEMO_WORDBEE_KEY": DEMO_API_KEY}
