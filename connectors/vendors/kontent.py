"""Kontent.ai Management API v2: binary upload, then upsert of the asset by external id.

Contract (vendor-docs/kontent-management-api-assets.txt and vendor-notes.md section 3):
- ``Authorization: Bearer <Management API key>``; 401/403 stop the run.
- ``POST /projects/{env}/files/{url-encoded file_name}`` with the raw bytes, ``Content-Type``
  matching the extension and ``Content-Length``; 100 MB cap; answers a file reference
  ``{"id": ..., "type": "internal"}``. Each binary file can be referenced by one asset only.
- ``PUT /projects/{env}/assets/external-id/{id}`` upserts: creates (needs ``file_reference``) or
  updates. Idempotent, so a resumed run can resend safely; the record ``id`` is the external id.
- Errors: ``{"request_id", "error_code", "message", "validation_errors": [{"message"}]}``.
- Limits: 10 requests/s and 400 requests/min per environment (shared by all keys) -> 429 with
  ``Retry-After``. The client-side limiter is sized from these, so a healthy run sees no 429;
  requests are also spaced 1/10 s apart, in case the vendor counts seconds as a token bucket.
- Listing: ``GET /projects/{env}/assets`` pages with the ``x-continuation`` header.

Choices where the docs are silent (change them here):
- A row with no title sends no ``title`` key (an update keeps the old title; a new asset shows
  its file name). ``descriptions`` is always sent: the manifest is the truth for alt texts.
- ``external_id`` is sent in the upsert body too (the doc lists it among the upsert fields).
- A metadata-only change re-sends the same ``file_reference`` (the asset keeps its file). If the
  vendor refuses a remembered file reference (e.g. cleaned up after a crash), the file is
  uploaded again once.
- Folder/collection: a plain string is a codename (a UUID is an id); ``{"external_id": ...}``
  style objects pass through. A row's ``folder``/``collection`` column wins over the setting.
- ``tags`` become a taxonomy element's terms (by codename) only when ``tags_element`` is set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pandas as pd
from pydantic import Field

from connectors.core.errors import RejectedError, TransientError
from connectors.core.files import FileInfo
from connectors.core.http import HeaderAuth, VendorAuth, VendorHTTP
from connectors.core.records import rejects_frame
from connectors.vendors.base import BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, VendorSpec

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Language codenames: letters, digits, '_' and '-' (e.g. "default", "en-US", "es_ES").
_LANGUAGE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}"
MB = 1024 * 1024


class KontentSettings(RateSettings):
    """``destination.settings`` for ``vendor: kontent``."""

    environment_id: str = Field(pattern=_UUID.pattern, description="the environment (project) id")
    language: str = Field(default="default", pattern=f"^{_LANGUAGE}$",
                          description="language codename for rows without a language")
    languages: list[str] | None = Field(
        default=None, description="the environment's language codenames; other rows are rejected before sending"
    )
    folder: str | dict[str, str] | None = Field(default=None, description="folder for every asset")
    collection: str | dict[str, str] | None = Field(default=None, description="collection for every asset")
    tags_element: str | None = Field(default=None, description="taxonomy element codename that receives tags")
    requests_per_second: float | None = Field(default=10, gt=0)
    requests_per_minute: int | None = Field(default=400, ge=1)
    max_file_mb: float = Field(default=100, gt=0, le=100)


def _reference(value: Any) -> dict[str, str] | None:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, dict):
        return value
    text = str(value).strip()
    if not text:
        return None
    return {"id": text} if _UUID.match(text) else {"codename": text}


def parse_error(response: httpx.Response) -> str:
    """``Kontent 400 (error_code 5): message; validation: ...`` from a Kontent error body."""
    try:
        body = response.json()
    except ValueError:
        return f"Kontent {response.status_code}: {response.text[:200]}"
    if not isinstance(body, dict):
        return f"Kontent {response.status_code}: {str(body)[:200]}"
    text = f"Kontent {response.status_code} (error_code {body.get('error_code')}): {body.get('message', '')}"
    details = [v.get("message", "") for v in body.get("validation_errors") or [] if isinstance(v, dict)]
    if details:
        text += "; " + "; ".join(details)
    if body.get("request_id"):
        text += f" (request_id {body['request_id']})"
    return text


class ContinuationPaginator:
    """Follows ``pagination.continuation_token`` via the ``x-continuation`` header; refuses a
    token it has already seen (a server bug would otherwise loop forever)."""

    def __init__(self) -> None:
        self.token: str | None = None
        self._seen: set[str] = set()
        self.done = False

    def advance(self, body: dict[str, Any]) -> None:
        token = (body.get("pagination") or {}).get("continuation_token")
        if not token:
            self.done = True
            return
        if token in self._seen:
            raise TransientError("Kontent returned a continuation token twice; stopping the listing")
        self._seen.add(token)
        self.token = token


class KontentConnector(BaseConnector):
    """Loads canonical asset rows into one Kontent.ai environment (see the module docstring)."""

    spec: ClassVar[VendorSpec]
    settings: KontentSettings

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.prefix = f"/projects/{self.settings.environment_id}"
        self.max_bytes = int(self.settings.max_file_mb * MB)

    def destination_key(self) -> str:
        return self.settings.environment_id

    def auth(self) -> VendorAuth:
        return HeaderAuth({"Authorization": f"Bearer {self.secret('api_key')}"})

    def error_message(self, response: httpx.Response) -> str:
        return parse_error(response)

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Vendor checks and payload columns. Rejects: malformed or unknown language."""
        s = self.settings
        out = frame.copy()
        lang = out["language"].astype("string").fillna(s.language)
        out["_language"] = lang
        bad_format = ~lang.str.fullmatch(_LANGUAGE).fillna(False).astype(bool)
        allowed = set(s.languages) if s.languages else None
        unknown = ~lang.isin(allowed).astype(bool) if allowed else pd.Series(False, index=out.index)
        rejects = []
        if bad_format.any():
            rejects.append(rejects_frame(out[bad_format], field="language",
                                         reason="invalid language codename '" + lang[bad_format] + "'"))
        unknown &= ~bad_format
        if unknown.any():
            rejects.append(rejects_frame(
                out[unknown], field="language",
                reason="language '" + lang[unknown] + "' is not one of the environment's languages ("
                + ", ".join(sorted(allowed or [])) + ")"))
        good = out[~(bad_format | unknown)].reset_index(drop=True)
        rej = pd.concat(rejects, ignore_index=True) if rejects else rejects_frame(out.iloc[0:0], field="", reason="")
        return good, rej

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None:
        if info.size is not None and info.size > self.max_bytes:
            return "file", (f"file is {info.size / MB:.1f} MB; Kontent accepts at most "
                            f"{self.settings.max_file_mb:g} MB")
        return None

    def content(self, row: dict[str, Any]) -> Any:
        return {"body": self._body(row), "file_name": row["file_name"], "content_type": row["content_type"]}

    def _body(self, row: dict[str, Any]) -> dict[str, Any]:
        """The upsert body without ``file_reference`` (added at send time)."""
        s = self.settings
        body: dict[str, Any] = {"external_id": row["id"]}
        if _present(row.get("title")):
            body["title"] = str(row["title"])
        desc = row.get("description")
        body["descriptions"] = (
            [{"language": {"codename": row["_language"]}, "description": str(desc)}] if _present(desc) else []
        )
        folder = _reference(row.get("folder")) if _present(row.get("folder")) else _reference(s.folder)
        if folder:
            body["folder"] = folder
        coll = _reference(row.get("collection")) if _present(row.get("collection")) else _reference(s.collection)
        if coll:
            body["collection"] = {"reference": coll}
        if s.tags_element:
            tags = row.get("tags") or []
            body["elements"] = [{"element": {"codename": s.tags_element},
                                 "value": [{"codename": t} for t in tags]}]
        return body

    def _upload_request(self, row: dict[str, Any], size: int) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.prefix}/files/{quote(str(row['file_name']), safe='')}",
            "headers": {"Content-Type": str(row["content_type"]), "Content-Length": str(size)},
        }

    def _upsert_url(self, record_id: str) -> str:
        return f"{self.prefix}/assets/external-id/{quote(record_id, safe='')}"

    @staticmethod
    def _reusable(row: Row) -> str | None:
        """A file reference uploaded earlier for this very file (same fingerprint), if any."""
        p = row.prior
        return p.file_ref if p and p.file_ref and p.file_hash == row.file_hash else None

    # -- plan / send ----------------------------------------------------------------------
    def plan(self, unit: Unit) -> Plan:
        """Exactly the requests ``send`` would send (auth header masked)."""
        row = unit.rows[0]
        size = row.info.size if row.info else 0
        reuse = self._reusable(row)
        requests = []
        if reuse is None:
            up = self._upload_request(row.data, size or 0)
            up["url"] = self.base_url + up["url"]
            up["headers"]["Authorization"] = "Bearer ***"
            up["body"] = f"<{size} bytes streamed from {row.data['file']}>"
            requests.append(up)
        ref = {"id": reuse or "<id returned by the upload>", "type": "internal"}
        requests.append({"method": "PUT", "url": self.base_url + self._upsert_url(row.id),
                         "headers": {"Authorization": "Bearer ***", "Content-Type": "application/json"},
                         "json": {"file_reference": ref, **self._body(row.data)}})
        return Plan("upsert" if reuse else "upload+upsert", requests)

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """Upload the binary unless the ledger holds a reference to this very file, then upsert
        by external id (idempotent). A refused remembered reference is uploaded again once."""
        row = unit.rows[0]
        size = (row.info.size if row.info else 0) or 0
        file_ref = self._reusable(row)
        sent = 0
        if file_ref is None:
            file_ref = self._upload(http, row, checkpoint)
            sent = size
        payload = {"file_reference": {"id": file_ref, "type": "internal"}, **self._body(row.data)}
        try:
            response = http.request("PUT", self._upsert_url(row.id), json=payload)
        except RejectedError:
            if sent:  # the file we just sent was refused: nothing more to try
                raise
            # A remembered file reference may be gone (cleaned up after a crash): upload again.
            file_ref = self._upload(http, row, checkpoint)
            sent = size
            payload["file_reference"]["id"] = file_ref
            response = http.request("PUT", self._upsert_url(row.id), json=payload)
        return [Result(row.id, vendor_id=response.json().get("id"), file_ref=file_ref, bytes_sent=sent)]

    def _upload(self, http: VendorHTTP, row: Row, checkpoint: Checkpoint) -> str:
        req = self._upload_request(row.data, (row.info.size if row.info else 0) or 0)
        response = http.request("POST", req["url"], content=self.files.opener(row.data["file"]),
                                headers=req["headers"])
        file_ref = str(response.json()["id"])
        checkpoint(row, "uploaded", {"file_ref": file_ref})
        return file_ref

    # -- read back ----------------------------------------------------------------------
    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """The vendor's asset for each row that exists there (by external id)."""
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            try:
                asset = http.request("GET", self._upsert_url(row.id)).json()
            except RejectedError as exc:
                if exc.status != 404:
                    raise
                continue  # not there
            found[row.id] = {"vendor_id": asset.get("id"), "asset": asset}
        return found

    def find(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The vendor's asset (as Kontent returns it) for each record id that exists there."""
        with self.session() as http:
            rows = [Row(id=i, data={"id": i}, index=n) for n, i in enumerate(ids)]
            return {k: v["asset"] for k, v in self.lookup(http, rows).items()}

    def iter_assets(self) -> Iterator[dict[str, Any]]:
        """Every asset in the environment, following ``x-continuation``."""
        pager = ContinuationPaginator()
        with self.session() as http:
            while not pager.done:
                headers = {"x-continuation": pager.token} if pager.token else None
                body = http.request("GET", f"{self.prefix}/assets", headers=headers).json()
                yield from body.get("assets") or []
                pager.advance(body)


SPEC = VendorSpec(
    name="kontent",
    connector="connectors.vendors.kontent:KontentConnector",
    default_url="https://manage.kontent.ai/v2",
    credential_keys=("api_key",),
    settings=KontentSettings,
    required_columns=("id", "file"),
    idempotent=True,  # upsert by external id; a re-upload only leaves an unreferenced binary
    rate_limits={"requests_per_second": 10, "requests_per_minute": 400},
    summary="binary upload, then upsert by external id",
)
KontentConnector.spec = SPEC


def _present(value: Any) -> bool:
    if value is None or value is pd.NA:
        return False
    if isinstance(value, float) and pd.isna(value):
        return False
    return not (isinstance(value, str) and not value.strip())
