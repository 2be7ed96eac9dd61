"""Media Pocket DAM API v2: create each asset in a project with its media fetched by URL (or from
S3), then update it in place.

Contract (vendor-docs/mediapocket-create-asset.txt and vendor-notes.md section 2):
- Base URL: the customer's own Media Pocket host + ``/api/v2`` (no public default: ``destination.url``
  is required). Every call sends ``X-API-KEY: <key>`` and ``Content-Type: application/json``.
- ``POST /projects/{project_id}/assets`` ``{title, description, category, tags, external_id,
  media_type, url: {file_url, filename} | s3: {s3_key, filename}}`` -> 200 ``{"asset": {...}}``.
  Media Pocket downloads ``file_url`` itself. ``media_type`` accepts only ``article``.
  NOT idempotent: every call creates a new asset, unless ``external_id`` is already taken
  -> 400 ``{"error": "External id has already been taken"}``. The record ``id`` is always sent as
  ``external_id``, so a resend can never make a second asset.
- NON-ATOMIC: a create whose media fails still creates the asset and answers 400
  ``{"error": "Asset <id> created, adding media to asset failed: <reason>"}``.
- ``GET /assets/{id}``; ``PUT /assets/{id}`` (metadata); ``POST /assets/{id}/media``
  ``{file_url, filename}`` -> 200 ``{"ok": "ok"}`` (replaces the media; URL form only).
- Errors: ``{"error": "<message>"}``. 401 Unauthorized (the run stops); 404 ``project not found`` /
  ``asset not found``; 422 Apipie texts naming the parameter (``Missing parameter title``,
  ``Invalid parameter 'media_type' value ...``), reported on the canonical column they come from;
  400 model errors (``Title is too long (maximum is 255 characters)``); 500.
- ``category`` is stored lower-cased: "unchanged" compares it lower-cased.
- No rate limit, no size limit, no listing and NO lookup by external id are documented.

How a row is loaded (the ledger remembers the asset id, a digest of the metadata sent, the file's
fingerprint and the project in ``extra``):
- new record: one create with the media (``url`` or ``s3``), journaled as ``intent`` first.
- known record: only what changed: metadata -> ``PUT /assets/{id}``; a changed file (or file name)
  -> ``POST /assets/{id}/media``. An unchanged record sends nothing.
- the non-atomic 400: the asset id is journaled at once (``created``), never created again; the
  media is added to it with ``POST /assets/{id}/media`` right away (one more try) and, if that
  fails too, the row is rejected (field ``file``) and the next run adds the media to that asset.
- "External id has already been taken": Media Pocket cannot be asked which asset holds an
  external id, so:
  * if this job created it (a ledger ``intent`` from a killed run, or a create of this run whose
    reply was lost) with the very metadata and file the row has now, the asset IS the record:
    the row is ``loaded`` with its asset id unknown (ledger ``extra.id_unknown``; a warning names
    it). It can be updated later only once its id is given (below);
  * otherwise (an asset this job's ledger does not know, or an older version of the record) the
    row is rejected (field ``id``) naming the external id and how to adopt it; nothing is created.
  * adopting: give the asset's id in the row's ``vendor_id`` column (setting ``vendor_id_column``)
    or in ``settings.adopt: {record id: asset id}``. The asset is read first (``GET``; its
    external id must be empty or the record id, its project the row's), journaled as ``created``
    with ``extra.adopted``, logged as a warning, then updated like a known record.

Choices where the docs are silent (settings unless noted):
- ``project_id``: the project of rows without a ``parent``; a row with neither is rejected.
  An asset stays in the project it was created in: a row whose project changes later is rejected
  (field ``parent``; the API documents no move).
- ``title_fallback``: the vendor requires a title; ``file_name`` (default) uses the file name for
  rows without one (counted in the run's notes), ``reject`` rejects them. Titles over 255
  characters are rejected before sending.
- ``media_type``: a row's ``media_type`` column ``article`` (any case) creates an article; any
  other value is rejected before sending. It matters at creation only (not part of "changed").
- ``PUT`` sends every metadata field (blank description/category as ``""``, no tags as ``[]``)
  plus ``external_id``: the manifest is the truth, whether PUT is partial or not. The create
  leaves blank fields out.
- Files: ``http(s)://`` passes through; ``s3://`` is presigned (``expires_seconds``, SigV4); a
  local file is copied to ``staging`` (s3:// or any fsspec location with ``public_base_url``),
  else rejected before sending (``connectors.core.fetchurls``). Presigned URLs are never logged,
  never part of the content hash (the file fingerprint is) and masked in dry runs.
- ``s3_bucket``: files in this bucket are sent as ``s3: {s3_key}`` (the bucket Media Pocket's S3
  integration reads; how it resolves keys is undocumented); other files as URLs. Adding media to
  an existing asset has only a URL form, so there even these files are presigned.
- ``adopt_media``: an adopted asset that already has media keeps it (``keep``) or gets the row's
  file (``replace``).
- ``recreate_deleted``: a remembered asset that answers 404 ``asset not found`` (deleted for good)
  is created again (journaled as ``intent`` first); else the row is rejected.
- A 404 ``project not found`` rejects the row and, without another request, every later row of
  that project in the batch.
- ``requests_per_second`` defaults to 5 (no limit documented); ``timeout_seconds`` (300) bounds a
  request: the vendor downloads the media within the create.
- Not handled (the API gives no way to know): an asset created by a lost-reply create whose media
  failed is recorded as loaded; a trashed asset is updated in place and stays in the trash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import pandas as pd
from pydantic import Field

from assetferry.connectors.core.credentials import resolve_options
from assetferry.connectors.core.errors import ConfigError, RejectedError, TransientError
from assetferry.connectors.core.fetchurls import FetchableSettings, FetchableURLs
from assetferry.connectors.core.http import Action, HeaderAuth, Verdict, VendorAuth, VendorHTTP, json_body
from assetferry.connectors.core.ledger import INTENT
from assetferry.connectors.core.records import RowProblems, rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, VendorSpec, text_checks,
)

log = logging.getLogger("assetferry.mediapocket")

TITLE_MAX = 255  # attachments.html: "Title is too long (maximum is 255 characters)"
TAKEN = "External id has already been taken"
_CREATED = re.compile(r"^Asset (\S+) created, adding media to asset failed: ?(.*)$", re.S)
# Apipie: "Missing parameter title", "Invalid parameter 'media_type' value ...", "url[file_url]"
_PARAM = re.compile(r"^(?:Missing parameter|Invalid parameter)\s+'?([A-Za-z_]+(?:\[[A-Za-z_]+\])*)'?")
#: The vendor's parameter -> the canonical column it comes from (reject reasons name the latter).
FIELDS = {"title": "title", "description": "description", "category": "category", "tags": "tags",
          "external_id": "id", "media_type": "media_type", "project_id": "parent", "url": "file",
          "s3": "file", "file_url": "file", "s3_key": "file", "filename": "file_name"}
_SIGNED = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")  # a URL's query may carry a signature
_TITLE_FROM_FILE = "title taken from the file name (no title)"


class MediaPocketSettings(RateSettings, FetchableSettings):
    """``destination.settings`` for ``vendor: mediapocket``."""

    max_title_chars: int = Field(default=TITLE_MAX, ge=1, le=TITLE_MAX,
                                 description="longest title accepted (Media Pocket's documented maximum: 255)")
    project_id: str | None = Field(default=None, min_length=1, description="project for rows without a parent")
    s3_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.\-]{1,62}$",
                                  description="files in this bucket are sent as s3 keys")
    # staging, public_base_url, expires_seconds, staging_options: FetchableSettings (fetch by URL)
    title_fallback: Literal["file_name", "reject"] = "file_name"
    vendor_id_column: str = Field(default="vendor_id", min_length=1)
    adopt: dict[str, str] = Field(default_factory=dict, description="record id -> Media Pocket asset id")
    adopt_media: Literal["keep", "replace"] = "keep"
    recreate_deleted: bool = True
    timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    requests_per_second: float | None = Field(default=5, gt=0)
    # one unit at a time by default: a non-idempotent create per row, and what one answer teaches
    # (a project that does not exist) spares the next rows' requests
    inflight: int = Field(default=1, ge=1, le=64)



@dataclass(frozen=True)
class _Asset:
    """What the ledger (or an adoption) says the vendor holds for a row."""

    vendor_id: str
    meta: str | None = None  # digest of the metadata last sent
    media: str | None = None  # media key (file fingerprint + name) the asset holds
    project: str | None = None
    adopted: bool = False


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _mask(url: str) -> str:
    """A URL fit for a plan or a message: its query (where a signature lives) hidden."""
    return _SIGNED.sub(r"\1?<query hidden>", url)


def vendor_error(exc: RejectedError | TransientError) -> str:
    """The vendor's ``error`` text of a refused request ("" when the body has none)."""
    data = exc.data
    return str(data.get("error") or "") if isinstance(data, dict) else ""


def param_field(message: str) -> str | None:
    """The canonical column behind the parameter an Apipie 422 names, e.g. ``url[file_url]`` -> file."""
    match = _PARAM.match(message)
    if not match:
        return None
    names = re.findall(r"[A-Za-z_]+", match.group(1))
    return FIELDS.get(names[-1]) or FIELDS.get(names[0]) or names[-1]


class MediaPocketConnector(BaseConnector):
    """Creates and updates assets in Media Pocket projects (see the module docstring)."""

    spec: ClassVar[VendorSpec]
    settings: MediaPocketSettings

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if not self.base_url:
            raise ConfigError("mediapocket needs destination.url: your Media Pocket host + /api/v2, "
                              "e.g. https://yourcompany.mediapocket.fi/api/v2")
        self.notes: Counter[str] = Counter()
        # check/describe need no I/O and no staging credentials; url_for gets them on first use
        self.fetch = FetchableURLs(self.settings.fetch_settings(), self.file_options, policy=self.files.policy)
        self._urls: FetchableURLs | None = None
        self._lock = threading.Lock()
        self._missing_projects: set[str] = set()
        # row id -> content hash of a create of ours that may have landed without us seeing the
        # reply (a killed run's intent, or a lost reply in this batch): "taken" then means "ours"
        self._ours: dict[str, str] = {}

    def auth(self) -> VendorAuth:
        return HeaderAuth({"X-API-KEY": self.secret("api_key")})

    def session(self) -> VendorHTTP:
        http = super().session()
        http.client.timeout = httpx.Timeout(self.settings.timeout_seconds, connect=10.0)
        http.client.headers["Content-Type"] = "application/json"  # the doc requires it on every call
        return http

    def error_message(self, response: httpx.Response) -> str:
        body = json_body(response)
        text = str(body.get("error")) if isinstance(body, dict) and body.get("error") else response.text[:300]
        return _mask(f"Media Pocket {response.status_code}: {text}")

    def classify(self, response: httpx.Response) -> Verdict | None:
        """422 names a parameter -> reject on its column; 404 -> reject (``parent`` for a project)."""
        status = response.status_code
        if status not in (404, 422):
            return None
        message = self.error_message(response)
        text = message.split(": ", 1)[-1]
        if status == 422:
            return Verdict(Action.REJECT, message, field=param_field(text))
        return Verdict(Action.REJECT, message, field="parent" if "project" in text else None)

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Project, title, media_type, adoption id and file checks; rejects name the column."""
        s = self.settings
        out = frame.copy()
        checks = RowProblems(out.index)

        project = out["parent"].astype("string").str.strip().replace("", pd.NA)
        if s.project_id:
            project = project.fillna(s.project_id)
        checks.flag(project.isna(), "parent", "no project: give a parent column or destination.settings.project_id")

        title = out["title"].astype("string")
        if s.title_fallback == "file_name":
            untitled = title.isna() & out["file_name"].notna()
            title = title.fillna(out["file_name"].astype("string"))
        checks.flag(title.isna(), "title", "missing title (Media Pocket requires one)")
        length = title.str.len().fillna(0)
        checks.flag(length > TITLE_MAX, "title", "title is " + length.astype(str)
             + f" characters; Media Pocket accepts at most {TITLE_MAX}")

        if "media_type" in out.columns:
            kind = out["media_type"].astype("string").str.strip().str.lower().replace("", pd.NA)
            bad = kind.notna() & (kind != "article")
            checks.flag(bad, "media_type", "media_type '" + out["media_type"].astype("string") + "' is not allowed: "
                 "Media Pocket creates only articles by type (leave it empty for media)")
            out["_article"] = (kind == "article").fillna(False).astype(bool)
        else:
            out["_article"] = False

        col = s.vendor_id_column
        adopt = (out[col].astype("string").str.strip().replace("", pd.NA) if col in out.columns
                 else pd.Series(pd.NA, index=out.index, dtype="string"))
        if s.adopt:
            adopt = adopt.fillna(out["id"].map(s.adopt).astype("string"))
        out["_adopt"] = adopt

        problems = self.fetch.check(out["file"])
        checks.flag(problems.notna(), "file", problems.astype(object))

        out["_project"] = project
        out["_title"] = title
        text_checks(out, s, "Media Pocket", checks, title=title)  # lengths and characters
        bad_rows = checks.bad
        if s.title_fallback == "file_name" and (named := int((untitled & ~bad_rows).sum())):
            self.notes[_TITLE_FROM_FILE] += named
        rejects = rejects_frame(out[bad_rows], field=checks.field[bad_rows], reason=checks.reason[bad_rows])
        return out[~bad_rows].reset_index(drop=True), rejects

    def content(self, row: dict[str, Any]) -> Any:
        return {"project": row["_project"], **self._meta(row), "file_name": row["file_name"]}

    @staticmethod
    def _meta(row: dict[str, Any]) -> dict[str, Any]:
        """The metadata as compared for "changed" (category lower-cased, as the vendor stores it)."""
        category = _text(row.get("category"))
        return {"title": str(row["_title"]), "description": _text(row.get("description")),
                "category": category.lower() if category else None, "tags": list(row.get("tags") or [])}

    # -- bodies -------------------------------------------------------------------------------
    def _create_body(self, row: Row, media: dict[str, Any]) -> dict[str, Any]:
        data = row.data
        body: dict[str, Any] = {"title": str(data["_title"])}
        for name in ("description", "category"):
            if _text(data.get(name)):
                body[name] = _text(data.get(name))
        if data.get("tags"):
            body["tags"] = list(data["tags"])
        body["external_id"] = row.id
        if data.get("_article"):
            body["media_type"] = "article"
        return {**body, **media}

    @staticmethod
    def _put_body(row: Row) -> dict[str, Any]:
        data = row.data
        return {"title": str(data["_title"]), "description": _text(data.get("description")) or "",
                "category": _text(data.get("category")) or "", "tags": list(data.get("tags") or []),
                "external_id": row.id}

    def _s3_key(self, file: str) -> str | None:
        bucket = self.settings.s3_bucket
        prefix = f"s3://{bucket}/"
        return file[len(prefix):] if bucket and file.startswith(prefix) else None

    @property
    def urls(self) -> FetchableURLs:
        """FetchableURLs with the staging credentials resolved (first use only)."""
        with self._lock:
            if self._urls is None:
                options = self.settings.staging_options
                resolved = resolve_options(options) if options is not None else None
                self._urls = FetchableURLs(self.settings.fetch_settings(resolved), self.file_options, policy=self.files.policy)
            return self._urls

    def _file_url(self, row: Row) -> str:
        """A URL Media Pocket can GET for the row's file. A credential: never log it."""
        fingerprint = row.info.fingerprint if row.info is not None else None
        return self.urls.url_for(str(row.data["file"]), fingerprint)

    def _create_media(self, row: Row) -> dict[str, Any]:
        name = str(row.data["file_name"])
        key = self._s3_key(str(row.data["file"]))
        if key is not None:
            return {"s3": {"s3_key": key, "filename": name}}
        return {"url": {"file_url": self._file_url(row), "filename": name}}

    def _describe(self, row: Row, *, s3_form: bool = True) -> dict[str, Any]:
        """The media part of a request for a dry run: no I/O, no signature."""
        file, name = str(row.data["file"]), str(row.data["file_name"])
        key = self._s3_key(file) if s3_form else None
        if key is not None:
            return {"s3": {"s3_key": key, "filename": name}}
        how = self.fetch.describe(file, row.info.fingerprint if row.info else None)
        shown = _mask(file) if how == "passed through" else f"<{how}>"
        return {"url": {"file_url": shown, "filename": name}}

    def _media_key(self, row: Row, file_hash: str | None = None) -> str:
        return _digest([file_hash if file_hash is not None else row.file_hash, str(row.data["file_name"])])

    def _facts(self, row: Row, project: str, **more: Any) -> dict[str, Any]:
        return {"meta": _digest(self._meta(row.data)), "media": self._media_key(row), "project": project, **more}

    # -- what the vendor holds ------------------------------------------------------------------
    def _known(self, row: Row) -> _Asset | None:
        if not row.vendor_id or row.prior is None:
            return None
        extra = row.prior.extra or {}
        return _Asset(row.vendor_id, extra.get("meta"), extra.get("media"), extra.get("project"),
                      bool(extra.get("adopted")))

    def _adopt_id(self, row: Row) -> str | None:
        return _text(row.data.get("_adopt"))

    def _asset_url(self, vendor_id: str) -> str:
        return f"/assets/{quote(vendor_id, safe='')}"

    def _get(self, http: VendorHTTP, vendor_id: str) -> dict[str, Any] | None:
        """The asset, or None when Media Pocket answers 404."""
        try:
            body = http.request("GET", self._asset_url(vendor_id)).json()
        except RejectedError as exc:
            if exc.status == 404:
                return None
            raise
        asset = body.get("asset") if isinstance(body, dict) else None
        return asset if isinstance(asset, dict) else None

    def _has_media(self, asset: dict[str, Any]) -> bool:
        return bool(asset.get("original_filename")) or asset.get("media_type") not in (None, "placeholder", "article")

    def _adopt(self, http: VendorHTTP, row: Row, vendor_id: str, checkpoint: Checkpoint) -> _Asset:
        """Read the asset a row names, check it is this record's, journal it (``created``)."""
        col = self.settings.vendor_id_column
        asset = self._get(http, vendor_id)
        if asset is None:
            raise RejectedError(f"{col} {vendor_id}: no such asset in Media Pocket (asset not found)", field=col)
        external = asset.get("external_id")
        if external not in (None, "", row.id):
            raise RejectedError(f"{col} {vendor_id} is the asset of external id {external!r}, not {row.id!r}",
                                field=col)
        project = asset.get("project_id")
        keep = self._has_media(asset) and self.settings.adopt_media == "keep"
        media = self._media_key(row) if keep else None
        checkpoint(row, "created", {"vendor_id": vendor_id,
                                    "extra": {"media": media, "project": project, "adopted": True}})
        log.warning("%s: adopted the existing Media Pocket asset %s (external id %s)", row.id, vendor_id,
                    "not set" if external in (None, "") else "matches")
        return _Asset(vendor_id, None, media, project, adopted=True)

    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """What Media Pocket holds for rows a killed run (or a lost reply) left unsure. The API
        cannot find an asset by external id: only an id the ledger or the row gives can be read.
        Rows with a ledger ``intent`` are remembered as ours (see ``_taken``)."""
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            prior = row.prior
            if prior is not None and prior.status == INTENT:
                self._ours[row.id] = prior.hash
            candidate = (prior.vendor_id if prior is not None else None) or self._adopt_id(row)
            if not candidate:
                continue
            asset = self._get(http, candidate)
            if asset is None or asset.get("external_id") not in (None, "", row.id):
                continue
            adopted = candidate == self._adopt_id(row) and candidate != (prior.vendor_id if prior else None)
            same_file = not adopted and prior is not None and prior.file_hash == row.file_hash
            keep = self._has_media(asset) and (same_file or self.settings.adopt_media == "keep")
            extra: dict[str, Any] = {"media": self._media_key(row) if keep else None,
                                     "project": asset.get("project_id")}
            if adopted:
                extra["adopted"] = True
                log.warning("%s: adopted the existing Media Pocket asset %s", row.id, candidate)
            found[row.id] = {"vendor_id": candidate, "asset": asset, "extra": extra}
        return found

    # -- plan / send ----------------------------------------------------------------------------
    def plan(self, unit: Unit) -> Plan:
        """Exactly the requests ``send`` would send (key masked, media URLs described)."""
        row = unit.rows[0]
        headers = {"X-API-KEY": "***", "Content-Type": "application/json"}
        known = self._known(row)
        requests: list[dict[str, Any]] = []
        action: list[str] = []
        adopt = self._adopt_id(row) if known is None else None
        if known is None and adopt:
            requests.append({"method": "GET", "url": self.base_url + self._asset_url(adopt), "headers": headers})
            known, action = _Asset(adopt, adopted=True), ["adopt"]
        if known is None:
            if self._id_unknown(row):
                return Plan("reject (asset id unknown)", [])
            url = f"{self.base_url}/projects/{quote(str(row.data['_project']), safe='')}/assets"
            requests.append({"method": "POST", "url": url, "headers": headers,
                             "json": self._create_body(row, self._describe(row))})
            return Plan("create", requests)
        if known.meta != _digest(self._meta(row.data)):
            requests.append({"method": "PUT", "url": self.base_url + self._asset_url(known.vendor_id),
                             "headers": headers, "json": self._put_body(row)})
            action.append("update")
        if known.media != self._media_key(row):
            media = self._describe(row, s3_form=False)["url"]
            requests.append({"method": "POST", "url": self.base_url + self._asset_url(known.vendor_id) + "/media",
                             "headers": headers, "json": media})
            action.append("media")
        return Plan("+".join(action) or "record", requests)

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """Create (new record) or update what changed (known record); see the module docstring.
        Raises RejectedError (row refused), TransientError (retry; also after the non-atomic 400,
        with the asset journaled), ConfigError (staging unusable), AuthError."""
        row = unit.rows[0]
        known = self._known(row)
        if known is None and (adopt := self._adopt_id(row)):
            known = self._adopt(http, row, adopt, checkpoint)
        if known is None:
            return [self._create(http, row, checkpoint)]
        return [self._update(http, row, known, checkpoint)]

    def _id_unknown(self, row: Row) -> bool:
        p = row.prior
        return p is not None and not p.vendor_id and bool((p.extra or {}).get("id_unknown"))

    def _create(self, http: VendorHTTP, row: Row, checkpoint: Checkpoint) -> Result:
        project = str(row.data["_project"])
        if project in self._missing_projects:
            raise RejectedError(f"Media Pocket 404: project not found ({project})", field="parent", status=404)
        if self._id_unknown(row):
            raise RejectedError(self._adopt_hint(row, "this record is in Media Pocket but its asset id is unknown "
                                                      "(created by an attempt whose reply was lost)"), field="id")
        body = self._create_body(row, self._create_media(row))
        try:
            response = http.request("POST", f"/projects/{quote(project, safe='')}/assets", json=body,
                                    idempotent=False)
        except TransientError as exc:
            if exc.maybe_applied:  # the vendor may hold it now: a later "taken" is this create
                self._ours[row.id] = row.hash
            raise
        except RejectedError as exc:
            message = vendor_error(exc)
            created = _CREATED.match(message) if exc.status == 400 else None
            if created:
                vendor_id, why = created.group(1), created.group(2) or "no reason given"
                checkpoint(row, "created", {"vendor_id": vendor_id, "extra": self._facts(row, project, media=None)})
                raise TransientError(f"asset {vendor_id} created but adding its media failed ({_mask(why)}); "
                                     f"the media is added to {vendor_id}, never a second asset") from None
            if exc.status == 400 and TAKEN in message:
                return self._taken(row, project)
            if exc.status == 404 and "project" in message:
                self._missing_projects.add(project)
                raise RejectedError(f"Media Pocket 404: project not found ({project})", field="parent",
                                    status=404) from None
            raise
        asset = response.json()["asset"]
        return Result(row.id, vendor_id=str(asset["id"]), extra=self._facts(row, project))

    def _adopt_hint(self, row: Row, what: str) -> str:
        col = self.settings.vendor_id_column
        return (f"{what}; Media Pocket's API cannot look an asset up by external id, so nothing was created: "
                f"to adopt it, give its Media Pocket asset id in this row's '{col}' column (or "
                f"destination.settings.adopt: {{{row.id}: <asset id>}}) and run again")

    def _taken(self, row: Row, project: str) -> Result:
        """A create answered "External id has already been taken"."""
        if self._ours.get(row.id) == row.hash:
            log.warning("%s: already created by an earlier attempt of this job whose reply was lost; Media "
                        "Pocket cannot tell its asset id, so the row counts as loaded without one (give the id "
                        "in '%s' to update it later)", row.id, self.settings.vendor_id_column)
            return Result(row.id, extra=self._facts(row, project, id_unknown=True))
        earlier = (" (most likely created by an earlier interrupted attempt of this job, with older data)"
                   if row.id in self._ours else "")
        raise RejectedError(self._adopt_hint(row, f"external id '{row.id}' has already been taken by a Media "
                                                  f"Pocket asset this job's ledger does not know{earlier}"),
                            field="id", status=400)

    def _update(self, http: VendorHTTP, row: Row, known: _Asset, checkpoint: Checkpoint) -> Result:
        project = str(row.data["_project"])
        vid = known.vendor_id
        if known.project and known.project != project:
            raise RejectedError(f"asset {vid} is in project {known.project}; Media Pocket's API cannot move it to "
                                f"{project} (keep the parent, or move it in Media Pocket and adopt it again)",
                                field="parent")
        meta_changed = known.meta != _digest(self._meta(row.data))
        media_changed = known.media != self._media_key(row)
        try:
            if meta_changed:
                http.request("PUT", self._asset_url(vid), json=self._put_body(row))
            if media_changed:
                self._add_media(http, row, vid)
        except RejectedError as exc:
            if exc.status == 404 and "asset not found" in vendor_error(exc) and self.settings.recreate_deleted:
                log.warning("%s: asset %s no longer exists in Media Pocket; creating it again", row.id, vid)
                checkpoint(row, INTENT, {"extra": {"gone": vid}})  # a kill from here on is reconciled
                return self._create(http, row, checkpoint)
            raise
        extra = self._facts(row, project)
        if known.adopted:
            extra["adopted"] = True
        return Result(row.id, vendor_id=vid, extra=extra)

    def _add_media(self, http: VendorHTTP, row: Row, vendor_id: str) -> None:
        body = {"file_url": self._file_url(row), "filename": str(row.data["file_name"])}
        try:
            http.request("POST", self._asset_url(vendor_id) + "/media", json=body)
        except RejectedError as exc:
            if exc.status != 400:
                raise
            raise RejectedError(f"adding media to asset {vendor_id} failed: {_mask(vendor_error(exc) or exc.reason)}"
                                f"; the asset is kept and its media is added on the next run", field="file",
                                status=400) from None

    # -- read back ----------------------------------------------------------------------------
    def find(self, vendor_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The asset (as Media Pocket returns it) for each of these asset ids that exists."""
        with self.session() as http:
            return {vid: asset for vid in vendor_ids if (asset := self._get(http, vid)) is not None}


SPEC = VendorSpec(
    name="mediapocket",
    connector="assetferry.connectors.vendors.mediapocket:MediaPocketConnector",
    default_url="",  # per customer: https://<host>/api/v2 (required)
    credential_keys=("api_key",),
    settings=MediaPocketSettings,
    required_columns=("id", "file"),
    idempotent=False,  # a create makes a new asset each time; external_id makes a resend fail instead
    summary="create in a project with media by URL/S3 key; then PUT metadata / add media",
)
MediaPocketConnector.spec = SPEC
