"""Ex Libris Esploro simulator (file links on research assets + the "Load files" job), from public docs only."""

import asyncio
import hashlib
import json
import mimetypes
import os
import random
import re
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

#: The sandbox's API key; ASSETFERRY_SANDBOX_KEY_ESPLORO replaces it (the test suite runs with
#: recognisable fake keys and scans every output for them).
DEMO_API_KEY = os.environ.get("ASSETFERRY_SANDBOX_KEY_ESPLORO", "sandbox-esploro-apikey")
DEMO_ASSET_IDS = "991000000100561,991000000200561,991000000300561"  # pre-created research assets
DEMO_JOB_ID = "M50762"  # "Import Research Assets Files" ("Load files"); institutions also show M50173
BASE_PATH = ""  # clients use the gateway root, like https://api-na.hosted.exlibrisgroup.com
ROUTES = (
    "get_asset", "patch_asset", "create_set", "get_set", "get_members", "manage_members", "run_job", "get_instance",
)

# Gateway governance errors (notes: "Error format"/"Governance thresholds"). The per-second text is the
# one quoted from Ex Libris fixtures; the daily wording is not in our sources (doc silent: our pick).
PER_SECOND_MESSAGE = "HTTP requests are more than allowed per second"
DAILY_MESSAGE = (
    "Daily API Request Threshold has been reached. "
    "For details see: https://developers.exlibrisgroup.com/alma/apis/#threshold"
)
KEY_NOT_ALLOWED = "API-key not defined or not configured to allow this API."
KEY_INVALID = "Invalid API Key"  # doc silent on the text; code/status from the gateway mapping in the notes
# Unknown asset id: an open question in the notes. We answer like Alma's bib API does for an unknown
# MMS id (HTTP 400, code 402203, "Input parameters ... is not valid.").
ERR_INVALID_ASSET = "402203"
GENERAL = "GENERAL_ERROR"
TERMINAL = ("COMPLETED_SUCCESS", "COMPLETED_NO_BULKS", "COMPLETED_WARNING", "COMPLETED_FAILED", "FAILED")
STATUS_DESC = {  # systemJobStatus code table (values seen in public Alma clients; desc texts approximate)
    "QUEUED": "Queued", "RUNNING": "Running", "COMPLETED_SUCCESS": "Completed Successfully",
    "COMPLETED_NO_BULKS": "Completed - No Bulks", "FAILED": "Failed",
}
COUNTERS = (  # "Import Research Assets Files" job instance counters (public example response)
    ("asset_succeeded", "Number of assets succeeded"),
    ("asset_partial_succeeded", "Number of assets partially succeeded"),
    ("asset_failed", "Number of assets failed"),
    ("file_uploaded", "Number of files uploaded"),
    ("file_failed_to_upload", "Number of files failed to upload"),
    ("file_skipped_upload", "Number of files skipped upload"),
)
LINK_KEYS = ("link.title", "link.url", "link.description", "link.type", "link.supplemental")
_JOB_ID = re.compile(r"^[A-Z][0-9]+$")
_MIME = mimetypes.MimeTypes()


class ExlError(Exception):
    """An Ex Libris error:
    {"errorsExist":true,"errorList":{"error":[{errorCode,errorMessage,trackingId}]},"result":null} in JSON,
    or <web_service_result> in XML, chosen by the request's Accept/format (XML is the default)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, raw: Any = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.raw = status, code, message, headers, raw

    def response(self, request: Request) -> Response:
        if self.raw is not None:  # an injected fault with its own body
            return JSONResponse(self.raw, status_code=self.status, headers=self.headers)
        tracking = _tracking_id()
        if wants_json(request):
            error = {"errorCode": self.code, "errorMessage": self.message, "trackingId": tracking}
            body = {"errorsExist": True, "errorList": {"error": [error]}, "result": None}
            return JSONResponse(body, status_code=self.status, headers=self.headers)
        xml = (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<web_service_result xmlns="http://com/exlibris/urm/general/xmlbeans"><errorsExist>true</errorsExist>'
            f"<errorList><error><errorCode>{escape(self.code)}</errorCode><errorMessage>{escape(self.message)}"
            f"</errorMessage><trackingId>{tracking}</trackingId></error></errorList></web_service_result>"
        )
        return Response(xml, status_code=self.status, headers=self.headers, media_type="application/xml")


def _general(message: str, status: int = 400) -> ExlError:
    return ExlError(status, GENERAL, message)


def _tracking_id() -> str:
    """Shaped like the real ones, e.g. E01-0101190932-VOBYO-AWAE1554214409."""
    letters = "".join(random.choices(string.ascii_uppercase, k=5))
    return f"E01-{datetime.now(timezone.utc):%d%m%H%M%S}-{letters}-AWAE{random.randrange(10**9, 10**10)}"


def wants_json(request: Request) -> bool:
    """Ex Libris answers XML unless `format=json` or an Accept naming application/json (*/* gets XML)."""
    fmt = request.query_params.get("format", "").lower()
    if fmt in ("json", "xml"):
        return fmt == "json"
    return "application/json" in request.headers.get("accept", "").lower()


def _xml(tag: str, value: Any) -> str:
    """Generic XML rendering of the JSON shape (not Ex Libris' exact XML schema, which is out of scope)."""
    if isinstance(value, list):
        return "".join(_xml(tag, v) for v in value)
    if isinstance(value, dict):
        return f"<{tag}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{tag}>"
    if value is None:
        return f"<{tag}/>"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"<{tag}>{escape(text)}</{tag}>"


def _answer(request: Request, body: dict[str, Any], root: str) -> Response:
    if wants_json(request):
        return JSONResponse(body)
    xml = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + _xml(root, body)
    return Response(xml, media_type="application/xml")


def _iso(ts: datetime | None = None) -> str:
    ts = ts or datetime.now(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


@dataclass
class _Link:
    """One queued link (temporary.linksToExtract entry) and, once the job ran, the file made from it."""

    seq: int
    asset_id: str
    url: str
    title: str | None
    description: str | None
    type: str | None
    supplemental: str  # "true" / "false", as sent
    status: str = "pending"  # pending -> extracted | failed; "discarded" when action=replace drops it
    md5: str | None = None
    size: int | None = None
    file_name: str | None = None
    mime_type: str | None = None
    error: str | None = None
    job_instance_id: str | None = None
    order: int | None = None
    created: str | None = None

    def submitted(self) -> dict[str, Any]:
        values = (self.title, self.url, self.description, self.type, self.supplemental)
        return {k: v for k, v in zip(LINK_KEYS, values) if v is not None}


@dataclass
class _Asset:
    id: str
    title: str
    asset_type: str = "publication.journalArticle"
    links: list[_Link] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # other patched fields, echoed by GET

    def with_status(self, status: str) -> list[_Link]:
        return [link for link in self.links if link.status == status]


@dataclass
class _Set:
    id: str
    name: str
    description: str
    private: str
    created: str
    members: list[str] = field(default_factory=list)


@dataclass
class _Instance:
    id: str
    external_id: str
    job_id: str
    name: str
    set_id: str
    submitted_at: float  # simulator clock, for the per-hour threshold
    submit_time: str
    status: str = "QUEUED"
    progress: int = 0
    start_time: str | None = None
    end_time: str | None = None
    counters: dict[str, int] = field(default_factory=lambda: {k: 0 for k, _ in COUNTERS})


class _Simulator:
    """All mutable state. Handlers never await between reading and changing state; the job task
    re-checks `generation` (bumped by reset) and the link's status after each awaited download."""

    def __init__(self, config: dict[str, Any], clock: Callable[[], float]) -> None:
        self.config, self.clock, self.generation = config, clock, 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.generation += 1
        self.limits = {k: c[k] for k in ("per_second", "daily", "max_running_jobs", "job_runs_per_hour")}
        self.assets = {i: _Asset(i, f"Sandbox research asset {i}") for i in c["asset_ids"]}
        self.sets: dict[str, _Set] = {}
        self.instances: dict[str, _Instance] = {}
        self.faults: list[dict[str, Any]] = []
        self.hits: deque[float] = deque()
        self.day, self.day_used = -1, 0
        self.next_seq, self.next_id, self.hold_jobs = 1, 1, False
        self.stats: dict[str, Any] = dict.fromkeys(
            ("requests", "accepted", "throttled", "apikey_in_query", "links_queued", "files_extracted",
             "files_failed", "bytes_fetched", "job_runs"), 0)
        self.by_route = dict.fromkeys(ROUTES, 0)

    def new_id(self) -> str:
        """Ex Libris-looking numeric ids ending in an institution code."""
        self.next_id += 1
        return f"95{self.next_id:09d}0561"

    def snapshot(self) -> dict[str, Any]:
        links = [link for a in self.assets.values() for link in a.links]
        return {
            **self.stats, "by_route": dict(self.by_route), "assets": len(self.assets), "sets": len(self.sets),
            "pending_links": sum(link.status == "pending" for link in links),
            "daily_used": self.day_used, "remaining": self.remaining(),
        }

    # ---- admission: auth, governance thresholds, faults -------------------------------------

    def admit(self, request: Request, route: str, write: bool) -> dict[str, Any] | None:
        """Raises ExlError when refused; returns an injected `when: after` fault for the handler."""
        self.stats["requests"] += 1
        self.by_route[route] += 1
        self._authenticate(request, write)
        self._throttle()
        fault = self._take_fault(route)
        if fault is not None and fault["when"] == "before":
            raise self.fault_error(fault)
        self.stats["accepted"] += 1
        return fault

    def _authenticate(self, request: Request, write: bool) -> None:
        """`Authorization: apikey <key>` or the `apikey` query parameter. The real gateway accepts both;
        the query form puts the key in URLs (proxy/server logs), so clients must use the header. Query use is
        counted in stats["apikey_in_query"]. The header wins when both are sent (doc silent)."""
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        key = value.strip() if scheme.lower() == "apikey" and value.strip() else None
        if "apikey" in request.query_params:
            self.stats["apikey_in_query"] += 1
            key = key or request.query_params["apikey"]
        if not key:
            raise ExlError(400, "UNAUTHORIZED", KEY_NOT_ALLOWED)
        permission = self.config["api_keys"].get(key)
        if permission is None:
            raise ExlError(403, "INVALID_REQUEST", KEY_INVALID)
        if write and permission != "rw":  # a read-only key on a write call (notes: HTTP 400 UNAUTHORIZED)
            raise ExlError(400, "UNAUTHORIZED", KEY_NOT_ALLOWED)

    def remaining(self) -> int:
        day = int(self.clock() // 86400)
        if day != self.day:  # the daily threshold is counted until midnight (UTC here)
            self.day, self.day_used = day, 0
        return max(0, self.limits["daily"] - self.day_used)

    def _throttle(self) -> None:
        """Daily threshold first (every call errors once it is reached), then the per-second threshold
        over a sliding 1 s window. Both answer 429; Ex Libris documents no Retry-After."""
        now = self.clock()
        if self.remaining() <= 0:
            self.stats["throttled"] += 1
            raise ExlError(429, "DAILY_THRESHOLD", DAILY_MESSAGE)
        while self.hits and self.hits[0] <= now - 1:
            self.hits.popleft()
        if len(self.hits) >= self.limits["per_second"]:
            self.stats["throttled"] += 1
            raise ExlError(429, "PER_SECOND_THRESHOLD", PER_SECOND_MESSAGE)
        self.hits.append(now)
        self.day_used += 1

    def _take_fault(self, route: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault["route"] in (None, route):
                fault["count"] -= 1
                self.faults = [f for f in self.faults if f["count"] > 0]
                return fault
        return None

    def fault_error(self, fault: dict[str, Any]) -> ExlError:
        status, retry_after = fault["status"], fault["retry_after"]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if status == 429:
            self.stats["throttled"] += 1
        if fault["body"] is not None:
            return ExlError(status, "", "", headers, raw=fault["body"])
        if status == 429:
            return ExlError(429, "PER_SECOND_THRESHOLD", PER_SECOND_MESSAGE, headers)
        return ExlError(status, GENERAL, f"Injected sandbox fault (HTTP {status}).", headers)

    # ---- assets -------------------------------------------------------------------------------

    def asset(self, asset_id: str) -> _Asset:
        found = self.assets.get(asset_id)
        if found is None:
            raise ExlError(400, ERR_INVALID_ASSET, f"Input parameters assetId {asset_id} is not valid.")
        return found

    def patch(self, asset: _Asset, action: str, body: dict[str, Any]) -> None:
        """Validate the whole body first, then apply: nothing is stored when any part is refused."""
        records = body.get("records")
        if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
            # doc: "a records array with an object"; more than one record is refused (doc silent)
            raise _general("The body must be {\"records\": [ {...} ]} with exactly one record.")
        record = dict(records[0])
        has_temporary = "temporary" in record
        links = _parse_links(record.pop("temporary", None))
        if action == "replace" and has_temporary:  # lists are replaced: the pending queue is swapped
            for old in asset.with_status("pending"):
                old.status = "discarded"
        for item in links:
            asset.links.append(_Link(
                self.next_seq, asset.id, item["link.url"], item.get("link.title"), item.get("link.description"),
                item.get("link.type"), item.get("link.supplemental", "false").lower()))
            self.next_seq += 1
        self.stats["links_queued"] += len(links)
        for key, value in record.items():  # other fields: add fills empty simple fields / appends lists
            if key.startswith("identifier."):
                continue  # doc: identifier.* are XML-only; the JSON input ignores them (doc silent on error)
            current = asset.fields.get(key)
            if action == "replace" or current in (None, "", [], {}):
                asset.fields[key] = value
            elif isinstance(current, list) and isinstance(value, list):
                asset.fields[key] = current + value

    def render(self, asset: _Asset) -> dict[str, Any]:
        """One record as GET /esploro/v1/assets returns it (fields after the public example response)."""
        pending = asset.with_status("pending")
        return {
            **asset.fields,
            "title": asset.title,
            "originalRepository": {"assetId": asset.id},
            "resourcetype.esploro": asset.asset_type,
            # doc silent whether GET shows queued links; we show them where they were sent
            "temporary": {"linksToExtract": [link.submitted() for link in pending]} if pending else {},
            "files": [_file(asset, link) for link in asset.with_status("extracted")],
        }

    def records(self) -> list[dict[str, Any]]:
        return [
            {"asset_id": a.id, "title": a.title, "links": [
                {"seq": k.seq, "title": k.title, "url": k.url, "description": k.description, "type": k.type,
                 "supplemental": k.supplemental == "true", "status": k.status, "extracted": k.status == "extracted",
                 "md5": k.md5, "size": k.size, "file_name": k.file_name, "mime_type": k.mime_type,
                 "error": k.error, "job_instance_id": k.job_instance_id}
                for k in a.links]}
            for a in self.assets.values()
        ]

    # ---- sets -----------------------------------------------------------------------------------

    def render_set(self, s: _Set, base: str) -> dict[str, Any]:
        link = f"{base}almaws/v1/conf/sets/{s.id}"
        return {
            "id": s.id, "name": s.name, "description": s.description,
            "type": {"value": "ITEMIZED", "desc": "Itemized"}, "content": {"value": "IER", "desc": "Research assets"},
            "status": {"value": "ACTIVE", "desc": "Active"}, "origin": {"value": "UI", "desc": "Institution only"},
            "private": {"value": s.private, "desc": "Yes" if s.private == "true" else "No"},
            "status_date": s.created, "created_by": {"value": "exl_api", "desc": "Ex Libris, API"},
            "created_date": s.created, "number_of_members": {"value": len(s.members), "link": link + "/members"},
            "link": link,
        }

    def create_set(self, body: dict[str, Any]) -> _Set:
        """Doc: create an empty itemized set, then add members with the Manage Members API; members sent
        here are ignored. Only research-asset (content IER) itemized sets exist in this sandbox."""
        general = ExlError(400, "402119", "General Error - An error has occurred while processing the request.")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise general
        set_type = _value(body.get("type"))
        if set_type not in ("ITEMIZED", "LOGICAL"):
            raise ExlError(400, "402262", "Set type is invalid. Only 'ITEMIZED' and 'LOGICAL' sets are supported.")
        if set_type == "LOGICAL" or _value(body.get("content")) != "IER":
            raise ExlError(400, "402265", "Failed to create a set.")  # doc silent: sandbox limit
        if any(s.name == name for s in self.sets.values()):
            raise ExlError(400, "402263", "The set name already exists. Please choose a different name.")
        private = str(_value(body.get("private")) or "false").lower()
        created = _iso()
        new = _Set(self.new_id(), name, str(body.get("description") or ""), private, created)
        self.sets[new.id] = new
        return new

    def manage_members(self, set_id: str, op: str | None, fail_on_invalid: bool, body: dict[str, Any]) -> _Set:
        """op=add_members|delete_members|replace_members; documented 601xx errors; all-or-nothing."""
        target = self.sets.get(set_id)
        if target is None:
            raise ExlError(400, "60107", "Invalid set ID.")
        if op not in ("add_members", "delete_members", "replace_members"):
            raise ExlError(400, "60111", "Invalid operation.")
        members = (body.get("members") or {}).get("member") if isinstance(body.get("members"), dict) else None
        if isinstance(members, dict):
            members = [members]
        if not isinstance(members, list) or not members:
            raise ExlError(400, "60113", "Input set with no members.")
        if len(members) > 1000:
            raise ExlError(400, "60118", "Input set member list exceeds limit.")
        ids = [m.get("id") if isinstance(m, dict) else None for m in members]
        if any(not isinstance(i, str) or not i.strip() for i in ids):
            raise ExlError(400, "60114", "Input set with no member ID.")
        if len(set(ids)) != len(ids):
            raise ExlError(400, "60119", "Input set with duplicate member.")
        if op == "delete_members":
            if any(i not in target.members for i in ids):
                raise ExlError(400, "60117", "Input set member ID is not in set.")
            target.members = [m for m in target.members if m not in ids]
            return target
        valid = [i for i in ids if i in self.assets]
        if len(valid) != len(ids) and fail_on_invalid:
            raise ExlError(400, "60116", "A member ID is not valid for the content.")
        if op == "replace_members":
            target.members = valid
        elif any(i in target.members for i in valid):
            raise ExlError(400, "60115", "A member ID is already in the set.")
        else:
            target.members += valid
        return target

    # ---- jobs -----------------------------------------------------------------------------------

    def check_job(self, job_id: str) -> None:
        if not _JOB_ID.match(job_id):
            raise ExlError(400, "402215", "Invalid job id format.")
        if job_id != self.config["job_id"]:
            raise ExlError(400, "402216", "Invalid job id.")

    def run_job(self, job_id: str, op: str | None, body: dict[str, Any]) -> tuple[_Instance, list[dict[str, Any]]]:
        """POST /almaws/v1/conf/jobs/{job_id}?op=run with a Job object whose parameter[] holds set_id.
        Thresholds (Jobs API doc): <= max_running_jobs API jobs running (402222) and <= job_runs_per_hour
        runs of this job in the previous hour (402223); which code is which is not documented."""
        self.check_job(job_id)
        if not op:
            raise ExlError(400, "402220", "Operation was not provided.")
        if op != "run":
            raise ExlError(400, "402221", "Operation is not supported.")
        params = body.get("parameter")
        params = [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []
        values = {n: p.get("value") for p in params if isinstance(n := _value(p.get("name")), str)}
        if "set_id" not in values:
            raise ExlError(400, "402228", "Mandatory parameter is missing from input.")
        set_id = values["set_id"]
        if not isinstance(set_id, str) or not set_id.strip():
            raise ExlError(400, "402229", "Mandatory parameter value is empty.")
        if set_id not in self.sets:
            raise ExlError(400, "60107", "Invalid set ID.")  # doc silent: the Sets API's code
        now = self.clock()
        running = sum(i.status not in TERMINAL for i in self.instances.values())
        recent = sum(i.job_id == job_id and i.submitted_at > now - 3600 for i in self.instances.values())
        if running >= self.limits["max_running_jobs"]:
            raise ExlError(400, "402222", "Execution threshold reached.")
        if recent >= self.limits["job_runs_per_hour"]:
            raise ExlError(400, "402223", "Execution threshold reached.")
        job_name = values.get("job_name") if isinstance(values.get("job_name"), str) else "Import Research Assets Files"
        instance_id = self.new_id()
        name = f"{job_name} - {datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
        instance = _Instance(instance_id, self.new_id(), job_id, name, set_id, now, _iso())
        self.instances[instance_id] = instance
        self.stats["job_runs"] += 1
        task = asyncio.get_running_loop().create_task(self._process(instance, self.generation))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        echoed = [{"name": {"value": _value(p.get("name"))}, "value": p.get("value")} for p in params]
        return instance, echoed

    def render_instance(self, i: _Instance, base: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": i.id, "name": i.name, "progress": i.progress,
            "status": {"value": i.status, "desc": STATUS_DESC.get(i.status, i.status)},
            "external_id": i.external_id, "submitted_by": {"value": "exl_api", "desc": "Ex Libris, API"},
            "submit_time": i.submit_time,
        }
        if i.start_time:
            body["start_time"] = i.start_time
        if i.end_time:
            body["end_time"] = i.end_time
        body["status_date"] = i.submit_time[:10] + "Z"
        if i.status in TERMINAL:
            body["alert"] = [{"value": "alert_general_success",
                              "desc": "The job completed successfully. For more information view the report details."}]
        body["counter"] = [
            {"type": {"value": f"import_research_assets_files.{k}", "desc": desc}, "value": str(i.counters[k])}
            for k, desc in COUNTERS
        ]
        body["job_info"] = {**_job_info(i.job_id), "link": f"{base}almaws/v1/conf/jobs/{i.job_id}"}
        body["link"] = f"{base}almaws/v1/conf/jobs/{i.job_id}/instances/{i.id}"
        return body

    async def _process(self, instance: _Instance, generation: int) -> None:
        """The "Load files" job: for each set member, download every link pending when the job starts
        (links queued later wait for the next run). Each download is a real HTTP GET (httpx); md5 and size
        are recorded, failures marked and removed from the queue (doc silent: not retried). As in the public
        example response, the job ends COMPLETED_SUCCESS even when files failed: the counters tell."""
        if self.config["job_start_delay"]:
            await asyncio.sleep(self.config["job_start_delay"])
        while self.hold_jobs and generation == self.generation:
            await asyncio.sleep(0.01)
        if generation != self.generation:
            return
        instance.status, instance.start_time = "RUNNING", _iso()
        target = self.sets.get(instance.set_id)
        work = [(a, a.with_status("pending")) for a in (self.assets.get(m) for m in (target.members if target else []))
                if a is not None]
        total, done, c = sum(len(links) for _, links in work), 0, instance.counters
        try:
            async with httpx.AsyncClient(timeout=self.config["fetch_timeout"], follow_redirects=True) as client:
                for asset, links in work:
                    ok = failed = 0
                    for link in links:
                        result = await self._download(client, link.url) if link.status == "pending" else None
                        if generation != self.generation:
                            return
                        done += 1
                        instance.progress = done * 100 // total
                        if result is None or link.status != "pending":  # replaced while queued
                            c["file_skipped_upload"] += 1
                            continue
                        link.job_instance_id = instance.id
                        link.md5, link.size, link.file_name, link.mime_type, link.error = result
                        if link.error is None:
                            link.status = "extracted"
                            link.created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                            link.order = len(asset.with_status("extracted")) - 1
                            ok += 1
                            self.stats["files_extracted"] += 1
                            self.stats["bytes_fetched"] += link.size or 0
                        else:
                            link.status, link.md5, link.size = "failed", None, None
                            failed += 1
                            self.stats["files_failed"] += 1
                    c["file_uploaded"] += ok
                    c["file_failed_to_upload"] += failed
                    if ok or failed:
                        outcome = "succeeded" if not failed else "failed" if not ok else "partial_succeeded"
                        c[f"asset_{outcome}"] += 1
        except Exception:  # noqa: BLE001 - an unexpected sandbox error ends the job as FAILED
            instance.status, instance.end_time = "FAILED", _iso()
            return
        instance.progress = 100
        instance.status = "COMPLETED_SUCCESS" if total else "COMPLETED_NO_BULKS"
        instance.end_time = _iso()

    async def _download(self, client: httpx.AsyncClient, url: str) -> tuple[Any, ...]:
        """(md5, size, file_name, mime_type, error). Any HTTP(S) URL the sandbox can reach; anything else fails."""
        try:
            async with client.stream("GET", url) as r:
                if not 200 <= r.status_code < 300:
                    return None, None, None, None, f"HTTP {r.status_code} while downloading the file"
                digest, size = hashlib.md5(), 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > self.config["max_file_bytes"]:
                        return None, None, None, None, f"File larger than {self.config['max_file_bytes']} bytes"
                    digest.update(chunk)
                name = _file_name(str(r.url), r.headers.get("content-disposition"))
                mime = r.headers.get("content-type", "").split(";")[0].strip()
                mime = mime or _MIME.guess_type(name, strict=False)[0] or "application/octet-stream"
                return digest.hexdigest(), size, name, mime, None
        except Exception as exc:  # noqa: BLE001 - unreachable host, bad scheme, timeout...
            return None, None, None, None, f"Download failed: {type(exc).__name__}"


def _value(obj: Any) -> Any:
    """Ex Libris code fields are {"value": ..., "desc": ...}; plain values are accepted too."""
    return obj.get("value") if isinstance(obj, dict) else obj


def _parse_links(temporary: Any) -> list[dict[str, str]]:
    """records[0].temporary.linksToExtract[]: link.url mandatory; other keys optional strings;
    link.supplemental is the string "true"/"false" (doc; other values refused, doc silent)."""
    if temporary is None:
        return []
    links = temporary.get("linksToExtract", []) if isinstance(temporary, dict) else None
    if not isinstance(links, list):
        raise _general("temporary.linksToExtract must be an array of link objects.")
    out = []
    for n, item in enumerate(links):
        if not isinstance(item, dict):
            raise _general(f"linksToExtract[{n}] must be an object.")
        url = item.get("link.url")
        if not isinstance(url, str) or not url.strip():
            raise _general(f"linksToExtract[{n}]: link.url is mandatory.")
        if any(item.get(k) is not None and not isinstance(item.get(k), str) for k in LINK_KEYS):
            raise _general(f"linksToExtract[{n}]: link fields must be strings.")
        supplemental = item.get("link.supplemental", "false")
        if supplemental.lower() not in ("true", "false"):
            raise _general(f"linksToExtract[{n}]: link.supplemental must be \"true\" or \"false\".")
        out.append({k: item[k] for k in LINK_KEYS if item.get(k) is not None})
    return out


def _file_name(url: str, disposition: str | None) -> str:
    match = re.search(r'filename="?([^";]+)"?', disposition or "")
    if match:
        return match.group(1)
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"


def _file(asset: _Asset, link: _Link) -> dict[str, Any]:
    """A loaded file as the asset's files[] shows it (public example response)."""
    ext = link.file_name.rsplit(".", 1)[-1].lower() if link.file_name and "." in link.file_name else ""
    return {
        "fileTypeWithDesc": {"value": link.type, "desc": link.type} if link.type else None,
        "fileLicenseCodeWithDesc": None,
        # downloads from Esploro's delivery service are not simulated: the host is deliberately .invalid
        "fileDownloadUrl": f"https://sandbox.esploro.invalid/view/delivery/SANDBOX_INST/{asset.id}/{link.seq}",
        "file.name": link.file_name, "file.creationDate": link.created, "file.mimeType": link.mime_type,
        "file.type": link.type, "file.description": link.description, "file.size": str(link.size),
        "file.extension": ext, "file.order": str(link.order),
        "file.supplemental": "yes" if link.supplemental == "true" else "no", "file.displayName": link.title,
    }


def _job_info(job_id: str) -> dict[str, Any]:
    return {
        "id": job_id, "name": "Import Research Assets Files", "description": "Import Research Assets Files",
        "type": {"value": "MANUAL", "desc": "Manual"},
        "category": {"value": "RESEARCH_ASSETS", "desc": "Research Assets"},
    }


async def _json_body(request: Request) -> dict[str, Any]:
    """Bodies are JSON objects (Content-Type application/json)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = await request.body()
    if media in ("application/xml", "text/xml"):
        if b"temporary" in raw:  # doc: the temporary element is only supported in JSON
            raise _general("The temporary element (linksToExtract) is supported in JSON format only, not XML.")
        raise ExlError(415, GENERAL, "This sandbox accepts JSON bodies only (Content-Type: application/json).")
    if media != "application/json":  # doc silent on the status; 415 is what the JAX-RS stack answers
        raise ExlError(415, GENERAL, "Unsupported Content-Type: send application/json.")
    try:
        body = json.loads(raw)
    except ValueError:
        raise _general("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _general("The request body must be a JSON object.")
    return body


def demo_job(root: str, demo_dir: Any, stack: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """For ``assetferry demo esploro``: the bundled manifest (36 images over the 3 demo assets,
    rows of one asset scattered), local files staged to a temporary folder that a static file
    server started here serves (Esploro fetches files by URL), and the env variables it reads."""
    import tempfile

    from assetferry.sandbox.server import (
        running,  # here: sandbox.server imports this module
    )
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    stage = stack.enter_context(tempfile.TemporaryDirectory(prefix="assetferry-esploro-stage-"))
    files_root = stack.enter_context(running(Starlette(routes=[Mount("/", StaticFiles(directory=stage))])))
    job = {
        "source": {"url": str(demo_dir / "esploro.csv")},
        "destination": {"vendor": "esploro", "url": f"{root}{BASE_PATH}",
                        "credentials": {"api_key": "env:ASSETFERRY_DEMO_KEY"},
                        "settings": {"staging": f"file://{stage}", "public_base_url": files_root,
                                     "job_poll_seconds": 0.5, "job_timeout_seconds": 120}},
    }
    return job, {"ASSETFERRY_DEMO_KEY": DEMO_API_KEY}


def create_app(
    *,
    api_keys: dict[str, str] | None = None,
    asset_ids: list[str] | None = None,
    per_second: int = 25,
    daily: int = 100_000,
    max_running_jobs: int = 3,
    job_runs_per_hour: int = 5,
    job_id: str = DEMO_JOB_ID,
    max_file_bytes: int = 1024**3,
    fetch_timeout: float = 30.0,
    job_start_delay: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the simulator. `api_keys` maps key -> "rw" (read/write) or "ro" (read-only); `asset_ids` are
    the pre-existing research assets (default: DEMO_ASSET_IDS); `per_second`/`daily` are the governance
    thresholds (daily resets at UTC midnight of `clock`); `max_running_jobs`/`job_runs_per_hour` the Jobs API
    thresholds; `job_id` the "Load files" job; `job_start_delay` seconds a new instance stays QUEUED."""
    config = {
        "api_keys": api_keys if api_keys is not None else {DEMO_API_KEY: "rw"},
        "asset_ids": list(asset_ids if asset_ids is not None else DEMO_ASSET_IDS.split(",")),
        "per_second": per_second, "daily": daily, "max_running_jobs": max_running_jobs,
        "job_runs_per_hour": job_runs_per_hour, "job_id": job_id, "max_file_bytes": max_file_bytes,
        "fetch_timeout": fetch_timeout, "job_start_delay": job_start_delay,
    }
    sim = _Simulator(config, clock)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.simulator = sim

    @app.middleware("http")
    async def remaining_header(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        if request.url.path.startswith(("/esploro/", "/almaws/")):
            response.headers["X-Exl-Api-Remaining"] = str(sim.remaining())
        return response

    async def exl_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ExlError)
        return exc.response(request)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        texts = {404: "The requested resource was not found.", 405: "The HTTP method is not allowed for this resource."}
        return ExlError(exc.status_code, GENERAL, texts.get(exc.status_code, str(exc.detail))).response(request)

    async def server_error(request: Request, exc: Exception) -> Response:
        return ExlError(500, GENERAL, f"Internal sandbox error: {type(exc).__name__}").response(request)

    app.add_exception_handler(ExlError, exl_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    _add_vendor_routes(app, sim)
    _add_control_routes(app, sim)
    return app


def _done(sim: _Simulator, fault: dict[str, Any] | None, request: Request, body: dict[str, Any], root: str) -> Response:
    """The answer, unless an injected `when: after` fault replaces it (the action already happened)."""
    if fault is not None:
        raise sim.fault_error(fault)
    return _answer(request, body, root)


def _add_vendor_routes(app: FastAPI, sim: _Simulator) -> None:
    @app.get("/esploro/v1/assets/{asset_ids}")
    async def get_assets(request: Request, asset_ids: str) -> Response:
        """Comma-separated ids allowed; {"totalRecordCount": n, "records": [...]}. Unknown ids are left out;
        none found -> 400 (402203)."""
        fault = sim.admit(request, "get_asset", write=False)
        ids = [i.strip() for i in asset_ids.split(",") if i.strip()]
        found = [sim.assets[i] for i in ids if i in sim.assets]
        if not found:
            sim.asset(ids[0] if ids else asset_ids)
        body = {"totalRecordCount": len(found), "records": [sim.render(a) for a in found]}
        return _done(sim, fault, request, body, "records")

    @app.post("/esploro/v1/assets/{asset_id}")
    async def patch_asset(request: Request, asset_id: str) -> Response:
        """?op=patch (default, the only op)&action=add|replace. add appends to temporary.linksToExtract
        (re-sending a link queues it twice: no de-duplication). Answers 200 with the asset as GET shows it
        (doc silent on the body: open question in the notes)."""
        fault = sim.admit(request, "patch_asset", write=True)
        op, action = request.query_params.get("op", "patch"), request.query_params.get("action")
        body = await _json_body(request)
        asset = sim.asset(asset_id)
        if op != "patch":
            raise _general(f"Operation '{op}' is not supported; op=patch is the only operation.")
        if action not in ("add", "replace"):  # doc silent on a default; we refuse a missing action
            raise _general("The action parameter must be add or replace.")
        sim.patch(asset, action, body)
        return _done(sim, fault, request, {"totalRecordCount": 1, "records": [sim.render(asset)]}, "records")

    @app.post("/almaws/v1/conf/sets")
    async def create_set(request: Request) -> Response:
        fault = sim.admit(request, "create_set", write=True)
        body = await _json_body(request)
        created = sim.create_set(body)
        return _done(sim, fault, request, sim.render_set(created, str(request.base_url)), "set")

    @app.get("/almaws/v1/conf/sets/{set_id}")
    async def get_set(request: Request, set_id: str) -> Response:
        fault = sim.admit(request, "get_set", write=False)
        found = sim.sets.get(set_id)
        if found is None:
            raise ExlError(400, "60107", "Invalid set ID.")
        return _done(sim, fault, request, sim.render_set(found, str(request.base_url)), "set")

    @app.get("/almaws/v1/conf/sets/{set_id}/members")
    async def get_members(request: Request, set_id: str) -> Response:
        """limit (0-100, default 10) / offset (default 0) pagination, total_record_count."""
        fault = sim.admit(request, "get_members", write=False)
        found = sim.sets.get(set_id)
        if found is None:
            raise ExlError(400, "60107", "Invalid set ID.")
        limit, offset = request.query_params.get("limit", "10"), request.query_params.get("offset", "0")
        if not (limit.isdigit() and int(limit) <= 100 and offset.isdigit()):
            raise _general("limit must be 0-100 and offset >= 0.")
        page = found.members[int(offset): int(offset) + int(limit)]
        base = str(request.base_url)
        members = [{"id": m, "description": sim.assets[m].title if m in sim.assets else None,
                    "link": f"{base}esploro/v1/assets/{m}"} for m in page]
        return _done(sim, fault, request, {"member": members, "total_record_count": len(found.members)}, "members")

    @app.post("/almaws/v1/conf/sets/{set_id}")
    async def manage_members(request: Request, set_id: str) -> Response:
        fault = sim.admit(request, "manage_members", write=True)
        body = await _json_body(request)
        fail_on_invalid = request.query_params.get("fail_on_invalid_id", "true").lower() != "false"
        updated = sim.manage_members(set_id, request.query_params.get("op"), fail_on_invalid, body)
        return _done(sim, fault, request, sim.render_set(updated, str(request.base_url)), "set")

    @app.post("/almaws/v1/conf/jobs/{job_id}")
    async def run_job(request: Request, job_id: str) -> Response:
        """Answers the Job details; additional_info.link is the instance URL to poll."""
        fault = sim.admit(request, "run_job", write=True)
        body = await _json_body(request)
        instance, params = sim.run_job(job_id, request.query_params.get("op"), body)
        base = str(request.base_url)
        stamp = format_datetime(datetime.now(timezone.utc), usegmt=True)
        job = {
            **_job_info(job_id), "content": {"value": "IMPORT_RESEARCH_ASSETS_FILES", "desc": "Research assets"},
            "parameter": params,
            "additional_info": {"value": f"Job no. {instance.id} triggered on {stamp}",
                                "link": f"{base}almaws/v1/conf/jobs/{job_id}/instances/{instance.id}"},
            "link": f"{base}almaws/v1/conf/jobs/{job_id}",
        }
        return _done(sim, fault, request, job, "job")

    @app.get("/almaws/v1/conf/jobs/{job_id}/instances/{instance_id}")
    async def get_instance(request: Request, job_id: str, instance_id: str) -> Response:
        """status.value: QUEUED -> RUNNING -> COMPLETED_SUCCESS (COMPLETED_NO_BULKS for nothing to load,
        FAILED on a sandbox error); progress %; counter[] as in the public example."""
        fault = sim.admit(request, "get_instance", write=False)
        sim.check_job(job_id)
        instance = sim.instances.get(instance_id)
        if instance is None or instance.job_id != job_id:
            raise _general("Invalid job instance id.")  # doc silent on the code
        return _done(sim, fault, request, sim.render_instance(instance, str(request.base_url)), "job_instance")


async def _control_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _general("The body must be a JSON object.")
    return body


def _add_control_routes(app: FastAPI, sim: _Simulator) -> None:
    """Sandbox-only routes (not part of the vendor API): no auth, no thresholds, not counted; JSON."""

    def ok(body: dict[str, Any]) -> Response:
        return JSONResponse(body)

    @app.get("/_sandbox/stats")
    async def stats() -> Response:
        return ok(sim.snapshot())

    @app.post("/_sandbox/reset")
    async def reset() -> Response:
        sim.reset()
        return ok(sim.snapshot())

    @app.get("/_sandbox/records")
    async def records(request: Request) -> Response:
        """{"records": [asset with every queued link and its outcome], "sets": [...], "jobs": [instances]}."""
        base = str(request.base_url)
        return ok({"records": sim.records(), "sets": [{"id": s.id, "name": s.name, "members": s.members}
                                                      for s in sim.sets.values()],
                   "jobs": [sim.render_instance(i, base) for i in sim.instances.values()]})

    @app.post("/_sandbox/assets")
    async def assets(request: Request) -> Response:
        """Body {"ids": ["991...", ...], "title": optional}: creates the research assets that do not exist."""
        body = await _control_body(request)
        ids, title = body.get("ids"), body.get("title")
        bad = lambda i: not isinstance(i, str) or not i.strip() or any(c in i for c in ",/ ")  # noqa: E731
        if not isinstance(ids, list) or not ids or any(bad(i) for i in ids) or not isinstance(title, str | None):
            raise _general("'ids' must be a non-empty list of id strings (no ',', '/' or spaces).")
        created = [i for i in dict.fromkeys(ids) if i not in sim.assets]
        for i in created:
            sim.assets[i] = _Asset(i, title or f"Sandbox research asset {i}")
        return ok({"created": created, "existing": [i for i in ids if i not in created]})

    @app.post("/_sandbox/jobs")
    async def jobs(request: Request) -> Response:
        """Body {"hold": true|false}: while held, new job instances stay QUEUED (and count as running)."""
        body = await _control_body(request)
        if not isinstance(body.get("hold"), bool):
            raise _general("'hold' must be true or false.")
        sim.hold_jobs = body["hold"]
        return ok({"hold": sim.hold_jobs, "instances": {i.id: i.status for i in sim.instances.values()}})

    @app.post("/_sandbox/faults")
    async def faults(request: Request) -> Response:
        """Body {"status": 400-599, "count": n>=1, "retry_after": int|null, "route": null|<route>,
        "when": "before"|"after", "body": optional JSON}: the next n matching admitted vendor requests answer
        that status; "after" = the request is fully processed and stored first."""
        body = await _control_body(request)
        fault = {"status": body.get("status"), "count": body.get("count", 1), "retry_after": body.get("retry_after"),
                 "route": body.get("route"), "when": body.get("when", "before"), "body": body.get("body")}
        ints_ok = all(isinstance(fault[k], int) and not isinstance(fault[k], bool) for k in ("status", "count"))
        if not (ints_ok and 400 <= fault["status"] <= 599 and fault["count"] >= 1):
            raise _general("'status' must be an int 400-599 and 'count' an int >= 1.")
        retry_ok = fault["retry_after"] is None or (isinstance(fault["retry_after"], int) and fault["retry_after"] >= 0)
        if not retry_ok or fault["route"] not in (None, *ROUTES) or fault["when"] not in ("before", "after"):
            raise _general(f"'retry_after': null|int >= 0; 'route': null|one of {list(ROUTES)}; 'when': before|after.")
        sim.faults.append(fault)
        return ok({"faults": sim.faults})

    @app.post("/_sandbox/limits")
    async def limits(request: Request) -> Response:
        """Body with any of {"per_second": n>=1, "daily": n>=0, "max_running_jobs": n>=1,
        "job_runs_per_hour": n>=1}; answers all current values. Reset restores the create_app values."""
        body = await _control_body(request)
        values = {k: body.get(k, v) for k, v in sim.limits.items()}
        valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= (k != "daily") for k, v in values.items())
        if set(body) - set(values) or not valid:
            raise _general(f"Known keys {sorted(values)}: ints >= 1 (daily >= 0).")
        sim.limits = values
        return ok(values)
