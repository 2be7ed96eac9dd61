"""Ex Libris Esploro: file links added to research assets, then the "Load files" job that fetches them.

Contract (vendor-docs/esploro-add-file-to-asset.txt and vendor-notes.md section 1):
- Auth: ``Authorization: apikey <key>`` on every call. Never the ``apikey`` query parameter the
  gateway also accepts: keys must not travel in URLs (proxy and server logs). A refused key
  (``UNAUTHORIZED``, ``INVALID_REQUEST``, ``FORBIDDEN``, 401/403) stops the run.
- JSON only: ``Accept: application/json`` and JSON bodies (the ``temporary`` element is JSON-only).
- ``POST /esploro/v1/assets/{assetId}?op=patch&action=add`` with
  ``{"records": [{"temporary": {"linksToExtract": [{link.title, link.url, link.description,
  link.type, link.supplemental}]}}]}``. Rows sharing a ``parent`` (the asset id) go in ONE request
  listing all their files; a parent is never split across requests, batches or tasks of a run.
- NOT idempotent: ``action=add`` appends, so a re-sent link is a duplicate in Esploro. The loader
  journals ``intent`` before the send; after a lost reply or a killed run, ``lookup`` asks
  Esploro (``GET /esploro/v1/assets/{ids}``) what the asset holds before anything is re-sent.
- The patch only queues URLs; the "Load files" job (``Import Research Assets Files``) downloads
  them. ``finish`` runs it once after every batch for the assets whose links wait for it: an
  itemized set of research assets (``POST /almaws/v1/conf/sets``, content ``IER``, then
  ``?op=add_members``), ``POST /almaws/v1/conf/jobs/{job_id}?op=run`` with the ``set_id``
  parameter, then polls ``GET .../instances/{id}`` to a final status (with a timeout) and reports
  its counters. Job thresholds (3 API jobs running, 5 runs of a job per hour: 402222/402223) are
  waited out within ``job_start_timeout_seconds``, else reported; the links stay queued for the
  next run's finish step.
- Errors: ``{"errorsExist": true, "errorList": {"error": [{"errorCode", "errorMessage",
  "trackingId"}]}}`` in JSON or ``<web_service_result>`` in XML, turned into one readable reason.
  Unknown asset (402203) rejects that parent's rows.
- Limits: a per-second threshold (25/s by default, a setting) paced by the limiter; a 429
  ``PER_SECOND_THRESHOLD`` (no Retry-After) waits ``throttle_wait_seconds`` and retries; a 429
  ``DAILY_THRESHOLD`` stops the run, the rest stays ``pending`` and the summary says when the
  allowance resets (midnight in ``daily_reset_timezone``). ``X-Exl-Api-Remaining`` is read on
  every answer, logged when low and reported by the finish step.

Files: Esploro fetches each file itself (``connectors.core.fetchurls``): http(s) passes through,
``s3://`` is presigned (``expires_seconds``), a local file is copied to ``staging`` and presigned
there (or served through ``public_base_url``); without staging, local rows are rejected before
anything is sent. A presigned URL is a credential: it is never logged, never journaled and not
part of ``content`` (the file fingerprint is).

Ledger statuses: ``queued`` (the link is on the asset, waiting for the job), ``loaded`` (the job
turned it into a file of the asset), ``fetch_failed`` (the job could not download it: the next run
adds it again). ``queued`` and ``loaded`` count as done.

Choices where the docs are silent (change them here or through the settings):
- Matching a row to what Esploro holds (reconcile, and checking the job's work): a queued link by
  its URL with the presigning parameters (``X-Amz-*``, ``AWSAccessKeyId``, ``Signature``,
  ``Expires``) removed, which is stable across runs and unique per source file; an extracted file
  (whose source URL Esploro does not show) by file name + title (``file.displayName``) + size.
  Two rows of one parent with the same file are told apart only by count. We assume ``GET``
  shows queued links under ``temporary.linksToExtract`` as sent (an open question).
- ``GET /esploro/v1/assets/{id1,id2,...}`` reads up to ``lookup_batch`` assets per call
  (comma-separated ids, as cloud apps do); each record is matched by ``originalRepository.assetId``.
- ``link.title``: the ``title`` column, else the file name. ``link.description``: the
  ``description`` column (left out when empty). ``link.type``: a ``file_type`` column, else the
  ``file_type`` setting (``accepted``). ``link.supplemental``: a ``supplemental`` column
  (true/false/yes/no/1/0), else the ``supplemental`` setting; sent as "true"/"false".
- A row changed after its link was added (new file or metadata): ``on_change: add`` adds the new
  version as another link (``action=add`` cannot replace one file; the old file stays in
  Esploro); ``on_change: reject`` rejects the row with a reason instead.
- The Load files job: id ``M50762`` (``job_id``; some institutions show M50173), parameters
  ``set_id`` + ``job_name`` (+ ``job_parameters``); a new private-false itemized set per run named
  ``<set_name_prefix> <run id>-<4 hex>`` (Ex Libris sets are not deleted by us), or the set named
  by ``set_id`` whose members are replaced each run. Members are added with
  ``fail_on_invalid_id=false`` (a deleted asset does not stop the job for the others). The job
  takes every queued link of the set's assets, also those of an earlier run whose job never ran.
- The daily allowance resets at midnight UTC (``daily_reset_timezone``): the notes say "until
  midnight" without a zone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit
from xml.etree import ElementTree
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from assetferry.connectors.core.credentials import resolve_options
from assetferry.connectors.core.errors import QuotaExhausted, RejectedError, VendorResponseError
from assetferry.connectors.core.fetchurls import FetchableSettings, FetchableURLs
from assetferry.connectors.core.files import FileInfo
from assetferry.connectors.core.http import Action, HeaderAuth, Verdict, VendorAuth, VendorHTTP, retry_after_seconds
from assetferry.connectors.core.ledger import INTENT, Ledger, LedgerEntry, entry
from assetferry.connectors.core.records import RowProblems, rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, UnitRule, VendorSpec, text_checks,
)

log = logging.getLogger("assetferry.esploro")

QUEUED, LOADED, FETCH_FAILED = "queued", "loaded", "fetch_failed"
FINISH_BATCH = 999_999  # the finish step's journal: <run>-b999999.jsonl (folded with the run's)
UNKNOWN_ASSET = "402203"
JOB_THRESHOLD = frozenset({"402222", "402223"})
AUTH_CODES = frozenset({"UNAUTHORIZED", "INVALID_REQUEST", "FORBIDDEN"})
MEMBERS_PER_CALL = 1000  # the Sets API refuses more (60118)
MB = 1024 * 1024
_PARENT = r"[^\s,/?#%]+"
_LINK_INDEX = re.compile(r"linksToExtract\[(\d+)\]")
_SIGNING = re.compile(r"(?i)^(x-amz-.*|awsaccesskeyid|signature|expires)$")
_PRESIGNED_TEXT = re.compile(r"(?i)https?://[^\s\"'<>]*(x-amz-signature|signature=)[^\s\"'<>]*")
_TRUE, _FALSE = ("true", "yes", "y", "1"), ("false", "no", "n", "0")
_TERMINAL = ("FAILED", "CANCELLED", "ABORTED", "SYSTEM_ABORTED")


class EsploroSettings(RateSettings, FetchableSettings):
    """``destination.settings`` for ``vendor: esploro``."""

    requests_per_second: float | None = Field(default=25, gt=0)
    throttle_wait_seconds: float = Field(default=1.0, ge=0, le=60,
                                         description="wait after a PER_SECOND_THRESHOLD 429 (no Retry-After)")
    daily_reset_timezone: str = Field(default="UTC", description="where the daily threshold's midnight is")
    remaining_warning: int = Field(default=1000, ge=0, description="log a warning below this X-Exl-Api-Remaining")
    # files Esploro fetches by URL: staging, public_base_url, expires_seconds, staging_options
    # (FetchableSettings, connectors.core.fetchurls)
    max_file_mb: float | None = Field(default=None, gt=0)
    # the link
    file_type: str = Field(default="accepted", min_length=1, description="link.type when no file_type column")
    supplemental: bool = False
    on_change: Literal["add", "reject"] = "add"
    lookup_batch: int = Field(default=20, ge=1, le=100)
    # the Load files job
    load_files: bool = True
    job_id: str = Field(default="M50762", pattern=r"^[A-Za-z0-9_]+$")
    job_parameters: dict[str, str] = Field(default_factory=dict)
    set_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z_]+$")
    set_name_prefix: str = Field(default="assetferry", min_length=1, max_length=100)
    job_timeout_seconds: float = Field(default=3600, gt=0)
    job_start_timeout_seconds: float = Field(default=300, ge=0)
    job_poll_seconds: float = Field(default=10, gt=0)

    @field_validator("daily_reset_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value



# -- Ex Libris error bodies ---------------------------------------------------------------------
def exl_errors(text: str, data: Any = None) -> list[tuple[str, str, str]]:
    """``(errorCode, errorMessage, trackingId)`` of an Ex Libris error body, JSON or XML."""
    if data is None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if isinstance(data, dict):
        errors = (data.get("errorList") or {}).get("error") if isinstance(data.get("errorList"), dict) else None
        errors = [errors] if isinstance(errors, dict) else errors or []
        return [(str(e.get("errorCode") or ""), str(e.get("errorMessage") or ""), str(e.get("trackingId") or ""))
                for e in errors if isinstance(e, dict)]
    if "<" not in text or "<!DOCTYPE" in text or "<!ENTITY" in text:
        return []
    try:
        root = ElementTree.fromstring(text[:65536])
    except ElementTree.ParseError:
        return []
    out = []
    for node in root.iter():
        if node.tag.rsplit("}", 1)[-1] != "error":
            continue
        parts = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in node}
        out.append((parts.get("errorCode", ""), parts.get("errorMessage", ""), parts.get("trackingId", "")))
    return out


def error_codes(exc: VendorResponseError) -> set[str]:
    return {code for code, _, _ in exl_errors(exc.body, exc.data)}


def parse_error(response: httpx.Response) -> str:
    """``Esploro 400: <message> (402203, trackingId E01-...)``; presigned URLs are masked."""
    errors = exl_errors(response.text[:65536])
    if errors:
        text = "; ".join(f"{msg or 'error'} ({code}" + (f", trackingId {tid})" if tid else ")")
                         for code, msg, tid in errors)
    else:
        text = response.text[:200] or response.reason_phrase
    return _PRESIGNED_TEXT.sub("<presigned URL>", f"Esploro {response.status_code}: {text}")


class ApiKeyAuth(HeaderAuth):
    """``Authorization: apikey <key>``; redacts the key (not the word ``apikey``)."""

    def __init__(self, key: str) -> None:
        super().__init__({"Authorization": f"apikey {key}"})
        self._key = key

    def secrets(self) -> list[str]:
        return [f"apikey {self._key}", self._key]


def link_key(url: str) -> str:
    """A URL's identity across runs: without the presigning parameters, hashed (a URL may carry
    other tokens: the ledger never holds one)."""
    parts = urlsplit(str(url).strip())
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SIGNING.match(k)]
    stable = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, urlencode(query), ""))
    return hashlib.blake2b(stable.encode(), digest_size=8).hexdigest()


def url_file_name(url: str) -> str:
    return unquote(posixpath.basename(urlsplit(url).path))


def _present(value: Any) -> bool:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


class EsploroConnector(BaseConnector):
    """Adds file links to Esploro research assets and runs the Load files job (see the module
    docstring)."""

    spec: ClassVar[VendorSpec]
    settings: EsploroSettings

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        # For check/describe (no I/O); url_for uses _fetcher() (staging options resolved).
        self.fetch = FetchableURLs(self.settings.fetch_settings(), self.file_options, policy=self.files.policy)
        self._fetch_io: FetchableURLs | None = None
        self._urls: dict[tuple[str, str], str] = {}  # presigned URLs of this batch: memory only
        self._lock = threading.Lock()
        self.api_remaining: int | None = None
        self._warned = False
        self._sleep: Callable[[float], None] = time.sleep
        self.max_bytes = int(self.settings.max_file_mb * MB) if self.settings.max_file_mb else None

    def auth(self) -> VendorAuth:
        return ApiKeyAuth(self.secret("api_key"))

    def error_message(self, response: httpx.Response) -> str:
        return parse_error(response)

    # -- classify ---------------------------------------------------------------------------
    def classify(self, response: httpx.Response) -> Verdict | None:
        status = response.status_code
        if status < 300:
            return None
        errors = exl_errors(response.text[:65536])
        codes = {code for code, _, _ in errors}
        message = parse_error(response)
        if "DAILY_THRESHOLD" in codes:
            return Verdict(Action.QUOTA, f"the Ex Libris daily API threshold is reached ({message})",
                           resets_at=self.resets_at())
        if "PER_SECOND_THRESHOLD" in codes or (status == 429 and not codes):
            hinted = retry_after_seconds(response)
            return Verdict(Action.RETRY, message,
                           retry_after=hinted if hinted is not None else self.settings.throttle_wait_seconds)
        if codes & AUTH_CODES or (status in (401, 403) and "REQUEST_TOO_LARGE" not in codes):
            return Verdict(Action.AUTH, message)
        if UNKNOWN_ASSET in codes:
            return Verdict(Action.REJECT, f"no such Esploro asset: {message}", field="parent")
        if status >= 500 or "ROUTING_ERROR" in codes:
            return Verdict(Action.RETRY, message)
        rows: dict[int, tuple[str | None, str]] = {}
        for _, msg, _ in errors:
            for match in _LINK_INDEX.finditer(msg):
                rows[int(match.group(1))] = (None, f"Esploro {status}: {msg}")
        return Verdict(Action.REJECT, message, rows=rows or None)

    def resets_at(self, now: datetime | None = None) -> str:
        """The next midnight in ``daily_reset_timezone`` (when the daily threshold resets), ISO."""
        zone = ZoneInfo(self.settings.daily_reset_timezone)
        local = (now or datetime.now(zone)).astimezone(zone)
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
        return midnight.isoformat()

    def _note(self, response: httpx.Response) -> httpx.Response:
        value = response.headers.get("x-exl-api-remaining", "")
        if value.strip().isdigit():
            self.api_remaining = int(value)
            if self.api_remaining < self.settings.remaining_warning and not self._warned:
                self._warned = True
                log.warning("Ex Libris API calls left today: %d (X-Exl-Api-Remaining)", self.api_remaining)
        return response

    # -- transform (vectorised) -----------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Payload columns and checks: parent id shape, a file Esploro can fetch (no staging for
        local files -> rejected here), supplemental flag. Rejects name the field."""
        s = self.settings
        out = frame.copy()
        checks = RowProblems(out.index)

        parent = out["parent"].astype("string").str.strip()
        checks.flag(~parent.str.fullmatch(_PARENT).fillna(False).astype(bool), "parent",
             "parent '" + parent.fillna("") + "' is not an Esploro asset id (no spaces, ',', '/', '?', '#', '%')")
        unusable = self.fetch.check(out["file"])
        checks.flag(unusable.notna(), "file", unusable.astype(object))
        if "supplemental" in out.columns:
            raw = out["supplemental"].astype("string").str.strip().str.lower().replace("", pd.NA)
            known = raw.isin(_TRUE + _FALSE).fillna(False).astype(bool) | raw.isna()
            checks.flag(~known, "supplemental", "supplemental '" + raw.fillna("") + "' is not true/false/yes/no/1/0")
            supplemental = raw.isin(_TRUE).fillna(False).astype(bool).where(raw.notna(), s.supplemental)
        else:
            supplemental = pd.Series(s.supplemental, index=out.index)
        file_type = (out["file_type"].astype("string").str.strip().replace("", pd.NA).fillna(s.file_type)
                     if "file_type" in out.columns else pd.Series(s.file_type, index=out.index, dtype="string"))
        out["_parent"] = parent
        out["_title"] = out["title"].astype("string").fillna(out["file_name"].astype("string"))
        out["_type"] = file_type
        out["_supplemental"] = supplemental.map({True: "true", False: "false"})
        text_checks(out, s, "Esploro", checks, title=out["_title"])  # link.title as sent
        bad = checks.bad
        good = out[~bad].reset_index(drop=True)
        rejects = (rejects_frame(out[bad], field=checks.field[bad], reason=checks.reason[bad]) if bad.any()
                   else rejects_frame(out.iloc[0:0], field="", reason=""))
        return good, rejects

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None:
        if self.max_bytes is not None and info.size is not None and info.size > self.max_bytes:
            return "file", f"file is {info.size / MB:.1f} MB; max_file_mb is {self.settings.max_file_mb:g}"
        return self.empty_file(info, row)

    def content(self, row: dict[str, Any]) -> Any:
        """What defines "changed": the parent, the link's fields without its URL (a presigned URL
        changes every run), and the file name. The loader adds the file fingerprint."""
        return {"parent": row["_parent"], "link": self._meta(row), "file_name": row["file_name"]}

    @staticmethod
    def _meta(row: dict[str, Any]) -> dict[str, str]:
        meta = {"link.title": str(row["_title"])}
        if _present(row.get("description")):
            meta["link.description"] = str(row["description"])
        meta["link.type"] = str(row["_type"])
        meta["link.supplemental"] = str(row["_supplemental"])
        return meta

    # -- URLs -------------------------------------------------------------------------------------
    def _fetcher(self) -> FetchableURLs:
        with self._lock:
            if self._fetch_io is None:
                options = self.settings.staging_options
                self._fetch_io = (FetchableURLs(self.settings.fetch_settings(resolve_options(options)),
                                                self.file_options, policy=self.files.policy) if options is not None else self.fetch)
            return self._fetch_io

    def _url(self, row: Row) -> str:
        """The URL Esploro fetches for this row (presigned or staged as needed; cached for the
        batch). A credential: never logged. Raises RejectedError(field="file")."""
        fingerprint = row.info.fingerprint if row.info else ""
        key = (str(row.data["file"]), fingerprint)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = self._fetcher().url_for(key[0], fingerprint or None)
        return url

    def _facts(self, row: Row, url: str) -> dict[str, Any]:
        """What the ledger keeps to recognise this row's link later (no URL)."""
        facts: dict[str, Any] = {"asset": row.data["_parent"], "link_key": link_key(url),
                                 "title": str(row.data["_title"]), "file_name": url_file_name(url)}
        if row.info is not None and row.info.size is not None:
            facts["size"] = row.info.size
        return facts

    def _asset_path(self, asset: str) -> str:
        return f"/esploro/v1/assets/{quote(asset, safe='')}"

    # -- plan / send ------------------------------------------------------------------------------
    def _decide(self, row: Row) -> str:
        """skip (Esploro holds this very version), reject (changed, on_change=reject) or add."""
        p = row.prior
        if p is None or not p.vendor_id:
            return "add"
        if p.status == "created" and p.hash == row.hash:
            return "skip"  # found at Esploro by the loader's reconcile: never sent again
        if p.status in (QUEUED, LOADED, "created") and self.settings.on_change == "reject":
            return "reject"
        return "add"

    def plan(self, unit: Unit) -> Plan:
        """The patch ``send`` would send; link URLs described, never presigned."""
        links = []
        for row in unit.rows:
            if self._decide(row) != "add":
                continue
            file = str(row.data["file"])
            how = self.fetch.describe(file, row.info.fingerprint if row.info else None)
            shown = urlunsplit(urlsplit(file)._replace(query="", fragment="")) if how == "passed through" else file
            links.append({"link.url": f"<{shown}: {how}>", **self._meta(row.data)})
        parent = str(unit.rows[0].data["_parent"])
        requests = []
        if links:
            requests.append({"method": "POST", "url": f"{self.base_url}{self._asset_path(parent)}?op=patch&action=add",
                             "headers": {"Authorization": "apikey ***", "Accept": "application/json",
                                         "Content-Type": "application/json"},
                             "json": {"records": [{"temporary": {"linksToExtract": links}}]}})
        return Plan("link", requests)

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """One patch for the parent listing every file of the unit not yet at Esploro. Rows the
        reconcile found are not sent again; a changed row re-added gets its own durable intent
        first (the loader journals one only for rows Esploro never had)."""
        parent = str(unit.rows[0].data["_parent"])
        results: list[Result] = []
        adds: list[tuple[int, Row]] = []
        for position, row in enumerate(unit.rows):
            decision = self._decide(row)
            if decision == "add":
                adds.append((position, row))
            elif decision == "skip":
                prior = row.prior.extra if row.prior else {}
                results.append(Result(row.id, status=LOADED if prior.get("state") == "extracted" else QUEUED,
                                      vendor_id=parent, extra={k: v for k, v in prior.items() if k != "state"}))
            else:
                results.append(Result(row.id, status="rejected", field="file", reason=(
                    f"changed since its link was added to Esploro asset {parent}; action=add cannot "
                    f"replace a file (on_change: reject): change it in Esploro, or set on_change: add")))
        if unit.rechecked:
            # A resend after a failed send: rows known to the ledger before (the loader looks up
            # only the others) are looked up here, on the queue only (the job has not run since).
            again = [row for _, row in adds if row.vendor_id]
            found = self.lookup(http, again, queued_only=True) if again else {}
            adds = [(p, row) for p, row in adds if row.id not in found]
            results += [Result(i, status=QUEUED, vendor_id=parent,
                               extra={k: v for k, v in f["extra"].items() if k != "state"}) for i, f in found.items()]
        sent: list[tuple[int, Row, dict[str, Any]]] = []
        links = []
        for position, row in adds:
            try:
                url = self._url(row)
            except RejectedError as exc:
                results.append(Result(row.id, status="rejected", field=exc.field or "file", reason=exc.reason))
                continue
            links.append({"link.url": url, **self._meta(row.data)})
            sent.append((position, row, self._facts(row, url)))
        if not links:
            return results
        for _, row, _ in sent:
            if row.vendor_id:
                checkpoint(row, INTENT, {"vendor_id": row.vendor_id})
        body = {"records": [{"temporary": {"linksToExtract": links}}]}
        try:
            response = http.request("POST", self._asset_path(parent), params={"op": "patch", "action": "add"},
                                    json=body, idempotent=False)
        except RejectedError as exc:
            # positions in this body -> positions in the unit; no position named = every link sent
            named = exc.rows or {i: (exc.field, exc.reason) for i in range(len(sent))}
            exc.rows = {sent[i][0]: v for i, v in named.items() if i < len(sent)}
            raise
        self._note(response)
        results += [Result(row.id, status=QUEUED, vendor_id=parent, extra=facts) for _, row, facts in sent]
        return results

    # -- read back ----------------------------------------------------------------------------------
    def assets(self, http: VendorHTTP, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Esploro's record of each asset id that exists, ``lookup_batch`` ids per GET."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, dict[str, Any]] = {}
        step = self.settings.lookup_batch
        for start in range(0, len(wanted), step):
            chunk = wanted[start:start + step]
            try:
                response = http.request("GET", "/esploro/v1/assets/" + ",".join(quote(i, safe="") for i in chunk))
            except RejectedError as exc:
                if UNKNOWN_ASSET in error_codes(exc):
                    continue  # none of them exists
                raise
            records = self._note(response).json().get("records") or []
            if len(chunk) == 1 and len(records) == 1:
                out[chunk[0]] = records[0]
                continue
            for record in records:
                rid = str((record.get("originalRepository") or {}).get("assetId") or record.get("assetId") or "")
                if rid in chunk:
                    out[rid] = record
                elif len(chunk) > 1:  # cannot tell which asset this is: ask one by one
                    return {**out, **self._one_by_one(http, wanted[start:])}
        return out

    def _one_by_one(self, http: VendorHTTP, ids: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for asset in ids:
            try:
                records = self._note(http.request("GET", self._asset_path(asset))).json().get("records") or []
            except RejectedError as exc:
                if UNKNOWN_ASSET in error_codes(exc):
                    continue
                raise
            if records:
                out[asset] = records[0]
        return out

    @staticmethod
    def _holdings(record: dict[str, Any]) -> tuple[Counter[str], list[dict[str, Any]]]:
        """(queued link keys with counts, extracted files) of an asset record."""
        temporary = record.get("temporary") or {}
        links = temporary.get("linksToExtract") or [] if isinstance(temporary, dict) else []
        queued = Counter(link_key(link["link.url"]) for link in links
                         if isinstance(link, dict) and link.get("link.url"))
        files = [f for f in record.get("files") or [] if isinstance(f, dict)]
        return queued, files

    @staticmethod
    def _take_file(files: list[dict[str, Any]], facts: dict[str, Any]) -> bool:
        """Consume the extracted file that matches (file name, title, size when known)."""
        for n, f in enumerate(files):
            if (f.get("file.name") == facts.get("file_name") and f.get("file.displayName") == facts.get("title")
                    and ("size" not in facts or str(f.get("file.size")) == str(facts["size"]))):
                del files[n]
                return True
        return False

    def lookup(self, http: VendorHTTP, rows: list[Row], *, queued_only: bool = False) -> dict[str, dict[str, Any]]:
        """Rows whose link Esploro already holds (queued, or extracted into a file unless
        ``queued_only``): id -> {"vendor_id": asset id, "extra": facts + "state"}. An unknown
        asset or a file that cannot get a URL any more counts as not held."""
        by_parent: dict[str, list[Row]] = {}
        for row in rows:
            by_parent.setdefault(str(row.data["_parent"]), []).append(row)
        records = self.assets(http, by_parent)
        found: dict[str, dict[str, Any]] = {}
        for parent, members in by_parent.items():
            record = records.get(parent)
            if record is None:
                continue
            queued, files = self._holdings(record)
            for row in members:
                try:
                    facts = self._facts(row, self._url(row))
                except RejectedError:
                    continue
                if queued[facts["link_key"]] > 0:
                    queued[facts["link_key"]] -= 1
                    state = "queued"
                elif not queued_only and self._take_file(files, facts):
                    state = "extracted"
                else:
                    continue
                found[row.id] = {"vendor_id": parent, "extra": {**facts, "state": state}}
        return found

    # -- the Load files job ---------------------------------------------------------------------------
    def finish(self, http: VendorHTTP, run_id: str) -> dict[str, Any] | None:
        """Run the Load files job for every asset with links waiting in the ledger (``queued``,
        this run's or an earlier one's), poll it, then read the assets back and journal each row
        ``loaded`` (a file now), ``fetch_failed`` (the next run adds it again) or still ``queued``.
        Sends nothing when nothing waits. A spent quota, a job threshold or a timeout is
        reported; the links stay queued for the next run. Raises TransientError (retried)."""
        if self.ledger is None:
            return None
        waiting = queued_entries(self.ledger)
        if not waiting:
            return None
        assets = sorted({e.vendor_id for e in waiting if e.vendor_id})
        report: dict[str, Any] = {"job_id": self.settings.job_id, "assets": len(assets), "links": len(waiting)}
        if not self.settings.load_files:
            report["job"] = "not run (load_files: false): run the Load files job in Esploro"
            return report
        try:
            set_id = self._fill_set(http, run_id, assets)
            report["set_id"] = set_id
            instance = self._start_job(http, set_id, run_id, report)
            if instance is None:
                report["queued"] = len(waiting)
                return self._reported(report)
            report["instance_id"] = instance
            body = self._poll(http, instance)
            status = str((body.get("status") or {}).get("value") or "")
            report["status"] = status
            report["counters"] = {str((c.get("type") or {}).get("value", "")).rsplit(".", 1)[-1]: _int(c.get("value"))
                                  for c in body.get("counter") or [] if isinstance(c, dict)}
            if not _terminal(status):
                report["timed_out"] = True
                report["queued"] = len(waiting)
                log.warning("the Load files job %s is still %s after %.0f s; its links stay queued",
                            instance, status, self.settings.job_timeout_seconds)
                return self._reported(report)
            report.update(self._verify(http, waiting, run_id))
        except QuotaExhausted as exc:
            report["stopped"] = f"quota: {exc}"
            report["resets_at"] = exc.resets_at
        except RejectedError as exc:
            report["error"] = exc.reason
            log.error("the Load files job could not run: %s", exc.reason)
        return self._reported(report)

    def _reported(self, report: dict[str, Any]) -> dict[str, Any]:
        if self.api_remaining is not None:
            report["api_remaining"] = self.api_remaining
        return report

    def _fill_set(self, http: VendorHTTP, run_id: str, assets: list[str]) -> str:
        """An itemized research-asset set holding exactly ``assets``: the configured one (members
        replaced) or a new one for this run."""
        s = self.settings
        set_id = s.set_id
        if set_id is None:
            body = {"name": f"{s.set_name_prefix} {run_id}-{uuid.uuid4().hex[:4]}",
                    "description": f"Research assets whose files assetferry added (run {run_id})",
                    "type": {"value": "ITEMIZED"}, "content": {"value": "IER"},
                    "private": {"value": "false"}, "status": {"value": "ACTIVE"}}
            set_id = str(self._note(http.request("POST", "/almaws/v1/conf/sets", json=body,
                                                 idempotent=False)).json()["id"])
        for n, start in enumerate(range(0, len(assets), MEMBERS_PER_CALL)):
            op = "replace_members" if n == 0 and s.set_id is not None else "add_members"
            members = {"members": {"member": [{"id": a} for a in assets[start:start + MEMBERS_PER_CALL]]}}
            self._note(http.request("POST", f"/almaws/v1/conf/sets/{quote(set_id, safe='')}", json=members,
                                    params={"op": op, "fail_on_invalid_id": "false"}, idempotent=False))
        return set_id

    def _start_job(self, http: VendorHTTP, set_id: str, run_id: str, report: dict[str, Any]) -> str | None:
        """Run the job on the set; an execution threshold (402222/402223) is retried every
        ``job_poll_seconds`` for ``job_start_timeout_seconds``. The instance id, or None."""
        s = self.settings
        params = [{"name": {"value": "set_id"}, "value": set_id},
                  {"name": {"value": "job_name"}, "value": f"{s.set_name_prefix} {run_id}"},
                  *({"name": {"value": k}, "value": v} for k, v in s.job_parameters.items())]
        deadline = time.monotonic() + s.job_start_timeout_seconds
        while True:
            try:
                response = http.request("POST", f"/almaws/v1/conf/jobs/{quote(s.job_id, safe='')}",
                                        params={"op": "run"}, json={"parameter": params}, idempotent=False)
                break
            except RejectedError as exc:
                if not error_codes(exc) & JOB_THRESHOLD:
                    raise
                if time.monotonic() + s.job_poll_seconds > deadline:
                    report["job"] = f"not started: {exc.reason}; the links stay queued for the next run"
                    log.warning("the Load files job was not started: %s", exc.reason)
                    return None
                self._sleep(s.job_poll_seconds)
        link = str((self._note(response).json().get("additional_info") or {}).get("link") or "")
        match = re.search(r"/instances/([^/?#]+)", link)
        if match is None:
            raise RejectedError(f"Esploro started the job but named no instance to follow ({link!r})")
        return match.group(1)

    def _poll(self, http: VendorHTTP, instance: str) -> dict[str, Any]:
        """The job instance when final, or as last seen at ``job_timeout_seconds``."""
        s = self.settings
        path = f"/almaws/v1/conf/jobs/{quote(s.job_id, safe='')}/instances/{quote(instance, safe='')}"
        deadline = time.monotonic() + s.job_timeout_seconds
        while True:
            body: dict[str, Any] = self._note(http.request("GET", path)).json()
            if _terminal(str((body.get("status") or {}).get("value") or "")) or time.monotonic() >= deadline:
                return body
            self._sleep(min(s.job_poll_seconds, max(0.0, deadline - time.monotonic())))

    def _verify(self, http: VendorHTTP, waiting: list[LedgerEntry], run_id: str) -> dict[str, Any]:
        """Read the assets back after the job: journal each waiting row's fate."""
        assert self.ledger is not None
        records = self.assets(http, {e.vendor_id for e in waiting if e.vendor_id})
        fates: Counter[str] = Counter()
        failed: list[str] = []
        by_asset: dict[str, list[LedgerEntry]] = {}
        for e in waiting:
            by_asset.setdefault(str(e.vendor_id), []).append(e)
        with self.ledger.writer(run_id, FINISH_BATCH) as journal:
            for asset, entries in by_asset.items():
                queued, files = self._holdings(records.get(asset) or {})
                fate: dict[str, str] = {}
                for e in entries:  # still queued first: a queued link is not a file yet
                    key = e.extra.get("link_key")
                    if key and queued[key] > 0:
                        queued[key] -= 1
                        fate[e.id] = QUEUED
                for e in entries:
                    if e.id not in fate:
                        fate[e.id] = LOADED if self._take_file(files, e.extra) else FETCH_FAILED
                for e in entries:
                    fates[fate[e.id]] += 1
                    if fate[e.id] == QUEUED:
                        continue
                    if fate[e.id] == FETCH_FAILED:
                        failed.append(e.id)
                    journal.record(entry(e.id, fate[e.id], run_id, hash=e.hash, file_hash=e.file_hash,
                                         vendor_id=e.vendor_id, extra=e.extra))
        if failed:
            log.warning("Esploro could not fetch %d file(s) (e.g. %s); the next run adds them again",
                        len(failed), ", ".join(failed[:5]))
        out: dict[str, Any] = {"loaded": fates[LOADED], "fetch_failed": fates[FETCH_FAILED], "queued": fates[QUEUED]}
        if failed:
            out["fetch_failed_ids"] = failed[:20]
        return out


def queued_entries(ledger: Ledger) -> list[LedgerEntry]:
    """Every ledger entry whose link waits for the Load files job."""
    index = ledger.load()
    table = index.table
    if not table.num_rows:
        return []
    ids = table.filter(pc.equal(table.column("status").cast(pa.string()), QUEUED)).column("id").to_pylist()
    return [e for e in index.get_many(ids).values() if e.status == QUEUED]


def _terminal(status: str) -> bool:
    return status.startswith("COMPLETED") or status in _TERMINAL


def _int(value: Any) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


SPEC = VendorSpec(
    name="esploro",
    connector="assetferry.connectors.vendors.esploro:EsploroConnector",
    default_url="https://api-na.hosted.exlibrisgroup.com",
    credential_keys=("api_key",),
    settings=EsploroSettings,
    required_columns=("id", "file", "parent"),
    unit=UnitRule("group", column="parent"),
    idempotent=False,  # action=add appends: a re-sent link is a duplicate
    done_statuses=(QUEUED, LOADED),
    summary="file links added to research assets (one request per asset), then the Load files job",
)
EsploroConnector.spec = SPEC
