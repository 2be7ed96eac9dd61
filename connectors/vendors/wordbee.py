"""Wordbee Translator API2: upload a file, then attach it to a segment as an asset.

Contract (vendor-docs/wordbee-upload-asset-to-segment.txt and vendor-notes.md section 5):
- Auth: ``POST {url}/auth/token`` ``{"accountid", "key"}`` answers the session token as a JSON
  string; every other call sends ``X-Auth-Token`` + ``X-Auth-AccountId``. A bad key is a 400
  "Invalid private key." (stop the run). The token expires after 30 idle minutes, and an invalid
  or expired token is a **400** (not 401) titled "Token invalid or expired.": the token is fetched
  again once and the request resent. ``DELETE {url}/auth/token`` releases it. Auth calls are
  not counted against the allowance.
- Two steps per file: ``POST {url}/media/upload?filename=<name>`` (multipart/form-data only,
  streamed, never read whole) answers ``{"result": {"token", "name"}}``, a single-use file
  token; then ``POST {url}/resources/assets/{segmentid}?scope=pr{project}`` with ``{"filetoken",
  "locale"?, "relativePath"?}`` answers the asset ``{projectId, documentId, segmentId, locale,
  relativePath, name, size, contentType, createdDate, modifiedDate, downloadUrl}``.
- Idempotency: the same segment + locale + relative path + name overwrites the earlier asset, so
  resending a row never duplicates it (``SPEC.idempotent``). A file token is consumed by the
  attach: it is never journaled and never sent twice. An attach that failed after it may have
  reached the vendor (5xx, lost reply) is redone with a fresh upload; a crash between the two
  steps simply uploads again on the next run.
- Errors: ``{"error": {"title", "details", "messages", ...}, "reason"}``, default status 400;
  "Invalid parameter '<name>': ..." names the parameter (mapped to the row's field).
- Limits: an hourly allowance per account (the doc's example: 1000/h; platform-specific), 429
  with ``{"error": {"type": "Throttling error", "message": "Requests throttled. Maximum allowed
  N per 01:00:00."}}`` and no ``Retry-After``; the doc asks to wait at least 10 s. The client
  counts its own requests against ``requests_per_hour`` and stops cleanly (rest pending) before
  the vendor has to say no; when the vendor says no anyway, the request waits 10 s, 20 s, 40 s
  (``throttle_wait_seconds``, doubling) and after ``throttle_retries`` refusals in a row the
  allowance is taken as spent: the run stops with the rest pending (resets within the hour).

Choices where the docs are silent (change them here):
- ``parent`` is the segment id (a positive whole number); the project is a setting (the scope
  ``pr{project_id}``; the compact scope grammar is inferred from the doc's example ``pr7214``).
  A scope the vendor refuses stops the run (a configuration error, not a row's).
- The locale is the row's ``language``, else the ``language`` setting, else none (the segment's
  root folder). The folder is the row's ``relative_path`` column, else the ``relative_path``
  setting, else none; sent with ``/`` separators, ``.``/duplicate separators dropped.
- Relative paths and file names that could leave the segment's folder are rejected before
  anything is sent: ``..``, absolute paths, drive letters, backslashes, the characters Windows
  refuses (``< > : " | ? *``) and control characters. A file name must be a plain name with an
  extension (the media upload needs one); folders go in ``relative_path`` only.
- Two rows that would land on the same asset (same segment, locale, folder and name, compared
  case-insensitively as on a Windows file store) would overwrite each other: the later row is
  rejected.
- Only the file is sent: ``title``, ``description``, ``tags``, ``category`` have no place in
  this API. "Changed" means a new file or a new destination (project, segment, locale, folder,
  name); a row moved elsewhere leaves its old asset in place (nothing is deleted).
- The token is shared by every batch of a run in one process and released by the finish step
  (a run that stops before loading anything leaves it to expire on its own after 30 minutes).
- Ledger: ``vendor_id`` is ``segment:locale:folder:name``; ``extra`` keeps ``downloadUrl`` and
  ``modifiedDate`` as the vendor answered them.
- The listing ``GET {url}/resources/assets/{segmentid}/list?scope=`` used by ``lookup`` is
  inferred from the Flex-document variant of this API; the loader does not need it (idempotent).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import httpx
import pandas as pd
from pydantic import Field, field_validator

from assetferry.connectors.core.errors import AuthError, RejectedError, TransientError
from assetferry.connectors.core.files import FileInfo
from assetferry.connectors.core.http import (
    Action, TokenAuth, Verdict, VendorAuth, VendorHTTP, json_body, retry_after_seconds, shared_auth,
)
from assetferry.connectors.core.records import RowProblems, rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, VendorSpec, text_checks,
)

log = logging.getLogger("assetferry.wordbee")

MB = 1024 * 1024
# Language codes as Wordbee writes them: "en", "de", "fr-CA", "zh-Hans-CN".
_LOCALE = r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*"
_SEGMENT = r"[1-9][0-9]{0,9}"
_TOKEN_EXPIRED = "token invalid or expired"
_THROTTLE = re.compile(r"Maximum allowed (\d+) per (?:(\d+)\.)?(\d+):(\d+):(\d+)")
_PARAM = re.compile(r"Invalid parameter '([^']+)'")
#: a vendor parameter named in an error -> the row's field
_FIELDS = {"segmentid": "parent", "locale": "language", "relativePath": "relative_path",
           "filename": "file_name", "filetoken": "file", "maxsize": "file"}
_REFUSED_CHARS = "< > : \" | ? * or a control character"

# (pattern, reason) in order; the first that matches names the problem. ``{what}`` is the field.
_PATH_RULES: list[tuple[str, str]] = [
    (r"[\x00-\x1f\x7f]", "contains a control character"),
    (r"(?:^|[/\\])\.\.(?:[/\\]|$)", "leaves the segment's asset folder ('..')"),
    (r"^[/\\]", "is absolute; it must be relative to the segment's asset folder"),
    (r"^[A-Za-z]:", "names a drive; it must be relative to the segment's asset folder"),
    (r"\\", "contains a backslash; separate folders with '/'"),
    (r"[<>:\"|?*]", f"contains a character Wordbee refuses ({_REFUSED_CHARS})"),
]
_NAME_RULES: list[tuple[str, str]] = _PATH_RULES + [
    (r"/", "is not a plain file name; put folders in relative_path"),
    (r"^\.*$", "is not a file name"),
]


class WordbeeSettings(RateSettings):
    """``destination.settings`` for ``vendor: wordbee``."""

    project_id: int = Field(ge=1, description="the project whose segments receive the assets (scope pr{id})")
    language: str | None = Field(default=None, pattern=f"^{_LOCALE}$",
                                 description="locale for rows without a language; none: the segment's root")
    locales: list[str] | None = Field(default=None, description="allowed locales; other rows are rejected unsent")
    relative_path: str | None = Field(default=None, description="folder for rows without a relative_path column")
    max_file_mb: float | None = Field(default=None, gt=0, description="reject larger files unsent (and send maxsize)")
    requests_per_hour: int | None = Field(default=1000, ge=1)
    # one unit at a time: the budget is an hourly allowance (about 0.3 requests/s), which
    # overlapping requests would only spend faster and stop at less predictable points
    inflight: int = Field(default=1, ge=1, le=64)
    throttle_wait_seconds: float = Field(default=10, ge=10, description="first wait after a 429 (doc: >= 10 s)")
    throttle_retries: int = Field(default=3, ge=0, description="hourly 429s in a row waited out before stopping")

    @field_validator("relative_path")
    @classmethod
    def _safe_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        problems = _problems(pd.Series([value.strip()], dtype="string"), "relative_path", _PATH_RULES)
        if problems.notna().any():
            raise ValueError(str(problems.iloc[0]))
        return _normalise(pd.Series([value.strip()], dtype="string")).iloc[0] or None


def _problems(values: pd.Series, what: str, rules: list[tuple[str, str]]) -> pd.Series:
    """The first rule each value breaks, as a reject reason (NA: none; NA values break none)."""
    reason = pd.Series(pd.NA, index=values.index, dtype="string")
    for pattern, why in rules:
        hit = values.str.contains(pattern, regex=True).fillna(False).astype(bool) & reason.isna()
        if hit.any():
            reason = reason.mask(hit, f"{what} '" + values[hit] + f"' {why}")
    return reason


def _normalise(paths: pd.Series) -> pd.Series:
    """``a//b/./c/`` -> ``a/b/c``; an empty result -> NA (the segment's root folder)."""
    out = paths.str.replace(r"/+", "/", regex=True).str.replace(r"(?:^|/)\.(?=/|$)", "", regex=True)
    out = out.str.strip("/")
    return out.mask(out.eq("").fillna(False).astype(bool))


def _text(body: Any) -> str:
    """The vendor's message: ``error.title`` (or ``error.message`` for throttling) or ``reason``."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        for key in ("title", "message"):
            if isinstance(error.get(key), str) and error[key]:
                return str(error[key])
    return str(body.get("reason") or "")


def _param(body: Any) -> str | None:
    """The parameter an "Invalid parameter '<name>': ..." error names."""
    match = _PARAM.search(_text(body))
    return match.group(1) if match else None


def _token_expired(body: Any) -> bool:
    if _TOKEN_EXPIRED in _text(body).lower():
        return True
    error = body.get("error") if isinstance(body, dict) else None
    messages = error.get("messages") if isinstance(error, dict) else None
    return any(isinstance(m, dict) and m.get("title") == "Not authenticated" for m in messages or [])


def _period(text: str) -> float | None:
    """Seconds of the window in "Maximum allowed N per [d.]hh:mm:ss" (a .NET TimeSpan)."""
    match = _THROTTLE.search(text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups()[1:])
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _present(value: Any) -> bool:
    return not (value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)))


class WordbeeConnector(BaseConnector):
    """Uploads canonical asset rows' files and attaches them to Wordbee segments (see the module
    docstring). One row = one unit = two requests."""

    spec: ClassVar[VendorSpec]
    settings: WordbeeSettings

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.scope = f"pr{self.settings.project_id}"
        self.max_bytes = int(self.settings.max_file_mb * MB) if self.settings.max_file_mb else None
        self._targets: dict[str, str] = {}  # destination key -> the id that claimed it (this run)
        # 429s in a row, per sending thread: the loader sends a batch's units from several
        # threads (``inflight``), and "in a row" means one request sequence's retries
        self._tl = threading.local()

    def destination_key(self) -> str:
        return str(self.settings.project_id)

    # -- auth -------------------------------------------------------------------------------
    def auth(self) -> VendorAuth:
        """The process-wide session token for this URL and account (``shared_auth``)."""
        account, key, policy = self.secret("account_id"), self.secret("api_key"), self.policy
        ident = hashlib.sha256(f"{account}\0{key}".encode()).hexdigest()[:16]

        def redact(text: str) -> str:
            for secret in (key, account):
                if len(secret) >= 4:
                    text = text.replace(secret, "***")
            return text

        def fetch(client: httpx.Client) -> dict[str, str]:
            """The token call (outside the limiter: auth calls are not counted). Network errors
            and 5xx are retried with the policy's backoff; any other refusal stops the run."""
            backoff, problem = policy.backoff, ""
            for attempt in range(1, max(1, policy.attempts) + 1):
                if attempt > 1:
                    time.sleep(backoff * (1 + random.random() / 4))
                    backoff *= 2
                try:
                    r = client.post("/auth/token", json={"accountid": account, "key": key})
                except httpx.TransportError as exc:
                    problem = type(exc).__name__
                    continue
                token = json_body(r) if r.status_code == 200 else None
                if isinstance(token, str) and token.strip():
                    return {"X-Auth-Token": token.strip(), "X-Auth-AccountId": account}
                if r.status_code == 200 or r.status_code == 429 or r.status_code >= 500:
                    problem = f"HTTP {r.status_code} without a token"
                    continue
                why = redact(_text(json_body(r)) or r.text[:200])
                raise AuthError(f"Wordbee refused the account id or API key ({r.status_code}: {why})")
            raise TransientError(f"Wordbee token request failed: {problem}")

        def release(client: httpx.Client, headers: dict[str, str]) -> None:
            r = client.delete("/auth/token", headers=headers)
            if r.status_code >= 300:
                raise TransientError(f"HTTP {r.status_code}")

        return shared_auth(f"wordbee|{self.base_url}|{ident}",
                           lambda: TokenAuth(fetch, release=release, static=[key, account]))

    def finish(self, http: VendorHTTP, run_id: str) -> dict[str, Any] | None:
        """After every batch: release the session token (``DELETE /auth/token``)."""
        if http.auth is not None:
            http.auth.close(http.client)
        return None

    # -- errors -----------------------------------------------------------------------------
    def error_message(self, response: httpx.Response) -> str:
        text = _text(json_body(response)) or response.text[:200]
        return f"Wordbee {response.status_code}: {text}"

    def classify(self, response: httpx.Response) -> Verdict | None:
        """Expired token (a 400) -> re-authenticate; 429 -> wait (>= 10 s, doubling) or, after
        ``throttle_retries`` in a row, quota; a refused scope -> stop (configuration); other
        400s -> reject the row, naming its field."""
        status = response.status_code
        if status < 300:
            self._tl.throttles = 0
            return None
        body = json_body(response)
        if status == 429:
            return self._throttled(response, body)
        self._tl.throttles = 0
        if status == 400 and _token_expired(body):
            return Verdict(Action.REAUTH, "Wordbee: session token invalid or expired")
        if status == 400:
            param = _param(body)
            if param == "scope":
                return Verdict(Action.AUTH, f"project {self.settings.project_id}: {_text(body)}")
            return Verdict(Action.REJECT, f"Wordbee 400: {_text(body) or response.text[:200]}",
                           field=_FIELDS.get(param or ""))
        return None

    def _throttled(self, response: httpx.Response, body: Any) -> Verdict:
        throttles = self._tl.throttles = getattr(self._tl, "throttles", 0) + 1
        s = self.settings
        text = _text(body) or "throttled"
        period = _period(text)
        hourly = period is None or period >= 3600  # the doc's 429 is the hourly allowance
        if hourly and throttles > s.throttle_retries:
            resets = datetime.now(timezone.utc) + timedelta(seconds=period or 3600)
            return Verdict(Action.QUOTA, f"Wordbee's allowance is spent ({text.rstrip('.')}; throttled "
                                         f"{throttles}x in a row)", resets_at=resets.isoformat(timespec="seconds"))
        hinted = retry_after_seconds(response)
        wait = hinted if hinted is not None else s.throttle_wait_seconds * 2 ** (throttles - 1)
        return Verdict(Action.RETRY, f"Wordbee 429: {text}", retry_after=wait)

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Segment, locale, folder and name per row; rejects (first problem per row): parent,
        language, relative_path, file_name, a destination another row already claimed."""
        s = self.settings
        out = frame.copy()
        checks = RowProblems(out.index)

        parent = out["parent"].astype("string").str.strip()
        checks.flag(parent.isna(), "parent", "missing parent (the Wordbee segment id the file attaches to)")
        checks.flag(~parent.str.fullmatch(_SEGMENT).fillna(True), "parent",
             "parent '" + parent + "' is not a Wordbee segment id (a positive whole number)")

        locale = out["language"].astype("string").str.strip()
        if s.language:
            locale = locale.fillna(s.language)
        checks.flag(~locale.str.fullmatch(_LOCALE).fillna(True), "language",
             "language '" + locale + "' is not a locale code (e.g. en, fr-CA)")
        if s.locales:
            allowed = {x.casefold() for x in s.locales}
            unknown = locale.notna() & ~locale.str.casefold().isin(allowed)
            checks.flag(unknown, "language", "language '" + locale + "' is not one of the allowed locales ("
                 + ", ".join(s.locales) + ")")

        column = out["relative_path"] if "relative_path" in out.columns else pd.Series(pd.NA, index=out.index)
        path = column.astype("string").str.strip()
        path = path.mask(path.eq("").fillna(False).astype(bool))
        if s.relative_path:
            path = path.fillna(s.relative_path)
        problems = _problems(path, "relative_path", _PATH_RULES)
        checks.flag(problems.notna(), "relative_path", problems)
        path = _normalise(path)

        name = out["file_name"].astype("string").str.strip()
        problems = _problems(name, "file_name", _NAME_RULES)
        checks.flag(problems.notna(), "file_name", problems)
        no_ext = ~name.str.fullmatch(r".+\.[^.\s]+").fillna(False)
        checks.flag(no_ext, "file_name", "file_name '" + name.fillna("") + "' has no extension (Wordbee's upload needs one)")

        out["_segment"], out["_locale"], out["_path"] = parent, locale, path
        text_checks(out, s, "Wordbee", checks)  # lengths and characters of the other text fields
        target = (parent.fillna("") + "|" + locale.fillna("").str.casefold() + "|"
                  + path.fillna("").str.casefold() + "|" + name.fillna("").str.casefold())
        ok = ~checks.bad
        if ok.any():
            # The same destination twice: the later row would overwrite the earlier one. Claims
            # last for this connector's life (one run), across the source's chunks.
            ids = out["id"].astype("string")
            claimed = [self._targets.setdefault(t, i) for t, i in zip(target[ok], ids[ok])]
            owner = pd.Series(claimed, index=target[ok].index, dtype="string").reindex(out.index)
            checks.flag(owner.notna() & owner.ne(ids), "file_name",
                 "same Wordbee asset (segment, locale, folder and name) as id '" + owner + "': it would overwrite it")
        bad = checks.bad
        good = out[~bad].reset_index(drop=True)
        rej = rejects_frame(out[bad], field=checks.field[bad], reason=checks.reason[bad])
        return good, rej

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None:
        if self.max_bytes is not None and info.size is not None and info.size > self.max_bytes:
            return "file", (f"file is {info.size / MB:.1f} MB; the job allows at most "
                            f"{self.settings.max_file_mb:g} MB (max_file_mb)")
        return self.empty_file(info, row)

    def content(self, row: dict[str, Any]) -> Any:
        return {"project": self.settings.project_id, "segment": row["_segment"],
                "locale": row["_locale"] if _present(row["_locale"]) else None,
                "path": row["_path"] if _present(row["_path"]) else None, "name": row["file_name"]}

    # -- plan / send ----------------------------------------------------------------------
    def _upload_params(self, row: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"filename": str(row["file_name"])}
        if self.max_bytes is not None:
            params["maxsize"] = self.max_bytes
        return params

    def _attach_body(self, row: dict[str, Any], filetoken: str) -> dict[str, Any]:
        body: dict[str, Any] = {"filetoken": filetoken}
        if _present(row["_locale"]):
            body["locale"] = str(row["_locale"])
        if _present(row["_path"]):
            body["relativePath"] = str(row["_path"])
        return body

    def plan_actions(self, frame: pd.DataFrame, priors: list[Any], file_hash: Any) -> list[str]:
        """The action ``plan`` names for each row (always both steps), for counting in bulk."""
        return ["upload+attach"] * len(frame)

    def plan(self, unit: Unit) -> Plan:
        """Exactly the two requests ``send`` sends (auth headers masked)."""
        row = unit.rows[0]
        size = (row.info.size if row.info else 0) or 0
        auth = {"X-Auth-Token": "***", "X-Auth-AccountId": "***"}
        upload = {"method": "POST", "url": str(httpx.URL(f"{self.base_url}/media/upload",
                                                            params=self._upload_params(row.data))),
                  "headers": {**auth, "Content-Type": "multipart/form-data"},
                  "body": f"<{size} bytes streamed from {row.data['file']} as multipart part 'file' "
                          f"({row.data['content_type']})>"}
        attach = {"method": "POST", "url": f"{self.base_url}/resources/assets/{row.data['_segment']}?scope={self.scope}",
                  "headers": {**auth, "Content-Type": "application/json"},
                  "json": self._attach_body(row.data, "<file token returned by the upload>")}
        return Plan("upload+attach", [upload, attach])

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """Upload, then attach with the fresh file token. An attach that may have reached the
        vendor and failed (5xx, lost reply) and an attach refusing its file token are redone
        with a new upload: a file token is never sent twice. Nothing is journaled between the
        steps (a file token is worth nothing to a later run)."""
        row = unit.rows[0]
        size = (row.info.size if row.info else 0) or 0
        attempts = max(1, self.policy.attempts)
        backoff = self.policy.backoff
        sent = 0
        token_refused = False
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            filetoken = self._upload(http, row)
            sent += size
            try:
                response = http.request("POST", f"/resources/assets/{row.data['_segment']}",
                                        params={"scope": self.scope}, json=self._attach_body(row.data, filetoken),
                                        idempotent=False)
            except TransientError as exc:
                if not exc.maybe_applied:
                    raise
                last = exc
                log.warning("%s: the attach may have reached Wordbee (%s); uploading again for a fresh file "
                            "token (%d/%d)", row.id, exc, attempt, attempts)
                time.sleep(backoff * (1 + random.random() / 4))
                backoff *= 2
                continue
            except RejectedError as exc:
                if _param(exc.data) != "filetoken" or token_refused:
                    raise
                token_refused = True  # spent or expired between the steps: one fresh upload
                last = exc
                log.warning("%s: Wordbee refused the new file token (%s); uploading again", row.id, exc)
                continue
            return [self._result(row, json_body(response), sent)]
        raise TransientError(f"Wordbee attach for {row.id} still failing after {attempts} uploads: {last}")

    def _upload(self, http: VendorHTTP, row: Row) -> str:
        data = row.data
        opener = self.files.opener(data["file"])
        name, ctype = str(data["file_name"]), str(data["content_type"])
        response = http.request("POST", "/media/upload", params=self._upload_params(data),
                                files=lambda: {"file": (name, opener(), ctype)})
        body = json_body(response)
        result = body.get("result") if isinstance(body, dict) else None
        token = result.get("token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientError("Wordbee's media upload answered without a file token")
        return token

    @staticmethod
    def _vendor_id(asset: dict[str, Any]) -> str:
        path = str(asset.get("relativePath") or "").replace("\\", "/")
        return f"{asset.get('segmentId')}:{asset.get('locale') or ''}:{path}:{asset.get('name')}"

    def _result(self, row: Row, asset: Any, sent: int) -> Result:
        if not isinstance(asset, dict):
            raise TransientError(f"Wordbee answered the attach for {row.id} without an asset")
        extra = {k: asset.get(k) for k in ("downloadUrl", "modifiedDate") if asset.get(k) is not None}
        return Result(row.id, vendor_id=self._vendor_id(asset), extra=extra, bytes_sent=sent)

    # -- read back ----------------------------------------------------------------------
    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """The asset each row's destination holds, from the segment listings (one call per
        segment; an unknown segment holds nothing)."""
        found: dict[str, dict[str, Any]] = {}
        by_segment: dict[str, list[Row]] = {}
        for row in rows:
            by_segment.setdefault(str(row.data["_segment"]), []).append(row)
        for segment, members in by_segment.items():
            try:
                listed = http.request("GET", f"/resources/assets/{segment}/list", params={"scope": self.scope}).json()
            except RejectedError:
                continue
            held = {self._key(a.get("locale"), a.get("relativePath"), a.get("name")): a
                    for a in listed or [] if isinstance(a, dict)}
            for row in members:
                d = row.data
                asset = held.get(self._key(d["_locale"] if _present(d["_locale"]) else None,
                                           d["_path"] if _present(d["_path"]) else None, d["file_name"]))
                if asset is not None:
                    found[row.id] = {"vendor_id": self._vendor_id(asset), "asset": asset,
                                     "extra": {k: asset.get(k) for k in ("downloadUrl", "modifiedDate")}}
        return found

    @staticmethod
    def _key(locale: Any, path: Any, name: Any) -> tuple[str, str, str]:
        folder = "/".join(p for p in re.split(r"[\\/]+", str(path or "")) if p not in ("", "."))
        return (str(locale or "").casefold(), folder.casefold(), str(name or "").casefold())


SPEC = VendorSpec(
    name="wordbee",
    connector="assetferry.connectors.vendors.wordbee:WordbeeConnector",
    default_url="https://www.wordbee-translator.com/api",
    credential_keys=("account_id", "api_key"),
    settings=WordbeeSettings,
    required_columns=("id", "file", "parent"),
    idempotent=True,  # same segment + locale + folder + name overwrites; file tokens are never resent
    summary="media upload, then attach to a segment (overwrites the same segment/locale/folder/name)",
)
WordbeeConnector.spec = SPEC
