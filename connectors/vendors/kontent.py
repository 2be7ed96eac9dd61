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

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.core.errors import AuthError, ConfigError, RejectedError, TransientError
from connectors.core.files import FileStore, resolve_paths
from connectors.core.http import RetryPolicy, VendorHTTP
from connectors.core.ledger import JournalWriter, LedgerEntry, entry
from connectors.core.ratelimit import Window, shared_limiter
from connectors.core.records import rejects_frame
from connectors.vendors.base import Outcome

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Language codenames: letters, digits, '_' and '-' (e.g. "default", "en-US", "es_ES").
_LANGUAGE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}"
MB = 1024 * 1024


class KontentSettings(BaseModel):
    """``destination.settings`` for ``vendor: kontent``."""

    model_config = ConfigDict(extra="forbid")

    environment_id: str = Field(pattern=_UUID.pattern, description="the environment (project) id")
    language: str = Field(default="default", pattern=f"^{_LANGUAGE}$",
                          description="language codename for rows without a language")
    languages: list[str] | None = Field(
        default=None, description="the environment's language codenames; other rows are rejected before sending"
    )
    folder: str | dict[str, str] | None = Field(default=None, description="folder for every asset")
    collection: str | dict[str, str] | None = Field(default=None, description="collection for every asset")
    tags_element: str | None = Field(default=None, description="taxonomy element codename that receives tags")
    requests_per_second: int = Field(default=10, ge=1)
    requests_per_minute: int = Field(default=400, ge=1)
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


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


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


class KontentConnector:
    """Loads canonical asset rows into one Kontent.ai environment (see the module docstring)."""

    name: ClassVar[str] = "kontent"
    default_url: ClassVar[str] = "https://manage.kontent.ai/v2"
    credential_keys: ClassVar[tuple[str, ...]] = ("api_key",)
    Settings: ClassVar[type[BaseModel]] = KontentSettings

    def __init__(
        self,
        *,
        url: str | None,
        settings: dict[str, Any],
        credentials: dict[str, SecretStr] | None,
        file_options: dict[str, Any] | None = None,
        policy: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = KontentSettings.model_validate(settings)
        self.base_url = (url or self.default_url).rstrip("/")
        self._credentials = credentials
        self.files = FileStore(file_options)
        self.policy = policy
        self.transport = transport
        env = self.settings.environment_id
        self.prefix = f"/projects/{env}"
        self.max_bytes = int(self.settings.max_file_mb * MB)

    # -- identity -------------------------------------------------------------------------
    def destination_key(self) -> str:
        return self.settings.environment_id

    def _http(self) -> VendorHTTP:
        if not self._credentials or "api_key" not in self._credentials:
            raise ConfigError("Kontent needs credentials.api_key")
        key = self._credentials["api_key"].get_secret_value()
        s = self.settings
        limiter = shared_limiter(
            f"kontent:{s.environment_id}",
            [Window(s.requests_per_second, 1.0), Window(s.requests_per_minute, 60.0)],
            min_interval=1.0 / s.requests_per_second,  # even spacing: no burst within a second
        )
        return VendorHTTP(
            self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            limiter=limiter,
            policy=self.policy,
            error_parser=parse_error,
            secrets=[key],
            transport=self.transport,
        )

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Vendor checks and payload columns. Rejects: malformed or unknown language."""
        s = self.settings
        out = frame.copy()
        out["file"] = resolve_paths(out["file"], out["_source"])
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

    # -- plan / load ---------------------------------------------------------------------
    def _decide(self, row: dict[str, Any], info: Any, prior: LedgerEntry | None) -> tuple[str, Any]:
        """-> (action, detail): reject/unchanged/upsert/upload, with the body and hashes."""
        if info.error:
            return "reject", ("file", f"{info.error}: {row['file']}")
        if info.size is not None and info.size > self.max_bytes:
            return "reject", ("file", f"file is {info.size / MB:.1f} MB; Kontent accepts at most "
                                      f"{self.settings.max_file_mb:g} MB")
        body = self._body(row)
        meta = json.dumps(body, sort_keys=True, ensure_ascii=False) + f"|{row['file_name']}|{row['content_type']}"
        rec_hash = _md5(meta + "|" + info.fingerprint)
        if prior and prior.status == "loaded" and prior.hash == rec_hash:
            return "unchanged", None
        reuse = prior.file_ref if prior and prior.file_ref and prior.file_hash == info.fingerprint else None
        return ("upsert" if reuse else "upload"), (body, rec_hash, reuse)

    def plan(self, frame: pd.DataFrame, priors: dict[str, LedgerEntry]) -> Iterator[dict[str, Any]]:
        """Exactly the requests ``load`` would send (auth header masked), one dict per row."""
        rows = frame.to_dict("records")
        infos = self.files.stat_many([r["file"] for r in rows])
        for row, info in zip(rows, infos):
            action, detail = self._decide(row, info, priors.get(row["id"]))
            item: dict[str, Any] = {"id": row["id"], "row": row.get("_row"), "source": row.get("_source"),
                                    "action": action}
            if action == "reject":
                item["field"], item["reason"] = detail
            elif action in ("upload", "upsert"):
                body, _, reuse = detail
                requests = []
                if action == "upload":
                    up = self._upload_request(row, info.size or 0)
                    up["url"] = self.base_url + up["url"]
                    up["headers"]["Authorization"] = "Bearer ***"
                    up["body"] = f"<{info.size} bytes streamed from {row['file']}>"
                    requests.append(up)
                ref = {"id": reuse or "<id returned by the upload>", "type": "internal"}
                requests.append({"method": "PUT", "url": self.base_url + self._upsert_url(row["id"]),
                                 "headers": {"Authorization": "Bearer ***", "Content-Type": "application/json"},
                                 "json": {"file_reference": ref, **body}})
                item["requests"] = requests
            yield item

    def load(
        self, frame: pd.DataFrame, priors: dict[str, LedgerEntry], journal: JournalWriter, run_id: str
    ) -> list[Outcome]:
        """Upload + upsert each row (see module docstring). Raises AuthError to stop the run and
        TransientError after 3 consecutive transient failures (the vendor looks down)."""
        rows = frame.to_dict("records")
        infos = self.files.stat_many([r["file"] for r in rows])
        outcomes: list[Outcome] = []
        streak = 0
        with self._http() as http:
            for row, info in zip(rows, infos):
                rid = row["id"]
                action, detail = self._decide(row, info, priors.get(rid))
                if action == "reject":
                    outcomes.append(Outcome(rid, "rejected", reason=detail[1], field=detail[0]))
                    continue
                if action == "unchanged":
                    outcomes.append(Outcome(rid, "unchanged", vendor_id=priors[rid].vendor_id))
                    continue
                try:
                    outcomes.append(self._send(http, row, info, detail, journal, run_id))
                    streak = 0
                except RejectedError as exc:
                    outcomes.append(Outcome(rid, "rejected", reason=exc.reason, field=exc.field))
                    streak = 0
                except AuthError:
                    raise
                except TransientError as exc:
                    outcomes.append(Outcome(rid, "failed", reason=str(exc)))
                    streak += 1
                    if streak >= 3:
                        raise TransientError(f"Kontent looks unavailable: {exc}") from None
        return outcomes

    def _upload(self, http: VendorHTTP, row: dict[str, Any], info: Any, journal: JournalWriter,
                run_id: str) -> str:
        req = self._upload_request(row, info.size or 0)
        response = http.request("POST", req["url"], content=self.files.opener(row["file"]),
                                headers=req["headers"])
        file_ref = response.json()["id"]
        journal.record(entry(row["id"], "uploaded", run_id, file_hash=info.fingerprint, file_ref=file_ref))
        return file_ref

    def _send(self, http: VendorHTTP, row: dict[str, Any], info: Any, detail: Any,
              journal: JournalWriter, run_id: str) -> Outcome:
        body, rec_hash, file_ref = detail
        sent = 0
        if file_ref is None:
            file_ref = self._upload(http, row, info, journal, run_id)
            sent = info.size or 0
        payload = {"file_reference": {"id": file_ref, "type": "internal"}, **body}
        try:
            response = http.request("PUT", self._upsert_url(row["id"]), json=payload)
        except RejectedError:
            if sent:  # the file we just sent was refused: nothing more to try
                raise
            # A remembered file reference may be gone (cleaned up after a crash): upload again.
            file_ref = self._upload(http, row, info, journal, run_id)
            sent = info.size or 0
            payload["file_reference"]["id"] = file_ref
            response = http.request("PUT", self._upsert_url(row["id"]), json=payload)
        vendor_id = response.json().get("id")
        journal.record(entry(row["id"], "loaded", run_id, hash=rec_hash, file_hash=info.fingerprint,
                             file_ref=file_ref, vendor_id=vendor_id))
        return Outcome(row["id"], "loaded", vendor_id=vendor_id, bytes_sent=sent)

    # -- read back ----------------------------------------------------------------------
    def lookup(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The vendor's asset for each record id that exists there (by external id)."""
        found: dict[str, dict[str, Any]] = {}
        with self._http() as http:
            for rid in ids:
                try:
                    found[rid] = http.request("GET", self._upsert_url(rid)).json()
                except RejectedError as exc:
                    if exc.status != 404:
                        raise
                    # not there
        return found

    def iter_assets(self) -> Iterator[dict[str, Any]]:
        """Every asset in the environment, following ``x-continuation``."""
        pager = ContinuationPaginator()
        with self._http() as http:
            while not pager.done:
                headers = {"x-continuation": pager.token} if pager.token else None
                body = http.request("GET", f"{self.prefix}/assets", headers=headers).json()
                yield from body.get("assets") or []
                pager.advance(body)


def _present(value: Any) -> bool:
    if value is None or value is pd.NA:
        return False
    if isinstance(value, float) and pd.isna(value):
        return False
    return not (isinstance(value, str) and not value.strip())
