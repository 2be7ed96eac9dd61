"""ActionHub (Data Baller): batch upsert of asset metadata into a program; no files.

Contract (vendor-docs/actionhub-post-assets.txt and vendor-notes.md section 4):
- Headers ``actionhub-key: <key>`` (the credential ``api_key``; a key may span several programs)
  and ``program-id: <program>`` (the brand/business unit every asset belongs to).
- ``POST /assets`` with ``{"assets": [{"asset_id", "asset_name", "labels"}]}`` upserts each asset
  by ``asset_id`` within the program: new ones are added, existing ones updated. Idempotent, so a
  resumed run or a retry may resend safely. Answers 200 ``{"result": "<text>"}`` (text not parsed).
- Schema limits: ``asset_id`` required, at most 64 characters; ``asset_name`` at most 124;
  ``labels`` a JSON list. Checked before sending (see ``prepare``).
- Errors (FastAPI): 403 ``{"detail": "Could not validate API KEY"}`` for a wrong key *and* for a
  program the key does not cover -> the run stops (configuration error). 422
  ``{"detail": [{"loc", "msg", "type"}]}``: a ``loc`` like ``["body", "assets", 3, "asset_name"]``
  names the 0-based position of the bad asset in the request -> exactly those rows are rejected
  with the ``msg`` and the loader resends the rest; a 422 naming no position (``["body"]``,
  ``["body", "assets"]``) -> the loader bisects the request within a budget to find the bad rows;
  a 422 on a header (``["header", "program-id"]``) refuses every row of that request.
- ``GET /assets?search=&page=&size=`` -> ``{"items", "total", "page", "size"}`` (fastapi-pagination
  style; ``search`` matches any field): ``lookup``, ``find`` and ``iter_assets`` page through it.
- No rate limits, batch limit or delete are documented.

Choices where the docs are silent (change them here or in the settings):
- Program: a row's ``parent`` wins over the ``program_id`` setting; a row with neither is
  rejected (field ``parent``). Rows of different programs never share a request
  (``UnitRule("chunk", column="_program")``). ``programs`` optionally lists the programs the key
  may write: other rows are rejected before sending rather than stopping the run with a 403.
- ``assets_per_request`` (default 500): the vendor documents no cap; a request the vendor finds too
  long (a 422 without a position) is split in halves by the loader. A request never spans two
  Prefect batches: the job's ``batch_size`` defaults to 500 for ActionHub (one full request per task).
- ``asset_name`` comes from ``title``; a row without a title sends no ``asset_name`` (the doc's
  type is a non-nullable string). ``labels`` are the row's ``tags`` and always sent (``[]`` too):
  the manifest is the truth, and whether the vendor merges or replaces labels is unknown.
- Over-long values are rejected (field ``id`` or ``title``) before sending. With
  ``truncate_names: true`` a title over 124 characters is cut to 124 instead; the run's summary
  counts it (``extra.notes``) and the log names the first ids.
- A 429 (none documented): ``Retry-After`` when sent; else the wait is read from a slowapi-style
  body ("... per 1 second"), else ``throttle_wait_seconds``. ``requests_per_second`` defaults to 5.
- ``api_version``: the optional ``api-version`` header is sent only when set (default: the
  vendor's latest).
- ``lookup`` searches each id (``search=<asset_id>``, exact match on ``asset_id`` among the
  hits) or, when that would take more requests, lists the whole program once.
- ``vendor_id`` in the ledger is the ``asset_id``; ``extra.program`` is the program.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pandas as pd
from pydantic import Field, model_validator

from assetferry.connectors.core.errors import RejectedError, TransientError
from assetferry.connectors.core.http import Action, HeaderAuth, Verdict, VendorAuth, VendorHTTP, json_body
from assetferry.connectors.core.records import RowProblems, rejects_frame
from assetferry.connectors.vendors.base import (
    BaseConnector, Checkpoint, Plan, RateSettings, Result, Row, Unit, UnitRule, VendorSpec, text_checks,
)

log = logging.getLogger("assetferry.actionhub")

MAX_ID = 64  # Asset.asset_id maxLength
MAX_NAME = 124  # Asset.asset_name maxLength
MAX_PAGE = 100  # GET /assets size: fastapi-pagination's default cap (doc silent)
TRUNCATED = f"asset_name truncated to {MAX_NAME} characters"
#: The vendor's field -> the canonical column it comes from (reject reasons name the latter).
FIELDS = {"asset_id": "id", "asset_name": "title", "labels": "tags"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SLOWAPI = re.compile(r"per (\d+) (second|minute|hour|day)")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class ActionHubSettings(RateSettings):
    """``destination.settings`` for ``vendor: actionhub``."""

    max_title_chars: int = Field(default=MAX_NAME, ge=1, le=MAX_NAME,
                                 description="longest asset_name accepted (ActionHub's schema: maxLength 124)")
    program_id: str | None = Field(default=None, min_length=1,
                                   description="program for rows without a parent")
    programs: list[str] | None = Field(
        default=None, description="programs the key may write; rows for others are rejected before sending")
    assets_per_request: int = Field(default=500, ge=1, le=10_000, description="assets per POST /assets")
    truncate_names: bool = Field(default=False, description=f"cut titles over {MAX_NAME} characters")
    api_version: str | None = Field(default=None, description="api-version header; default: the latest")
    page_size: int = Field(default=MAX_PAGE, ge=1, le=MAX_PAGE, description="GET /assets page size")
    throttle_wait_seconds: float = Field(default=2.0, gt=0, le=60,
                                         description="wait after a 429 that says nothing")
    requests_per_second: float | None = Field(default=5, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ActionHubSettings:
        for program in [self.program_id or "", *(self.programs or [])]:
            if _CONTROL.search(program):
                raise ValueError("program ids cannot contain control characters")
        if self.programs is not None and self.program_id and self.program_id not in self.programs:
            raise ValueError(f"program_id {self.program_id!r} is not one of programs")
        return self


def parse_error(response: httpx.Response) -> str:
    """``ActionHub 422: body.assets.3.asset_name: String should have ...; ...`` from a FastAPI body."""
    body = json_body(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = [f"{'.'.join(map(str, e.get('loc') or []))}: {e.get('msg', '')}" for e in detail
                 if isinstance(e, dict)]
        more = f" (+{len(parts) - 5} more)" if len(parts) > 5 else ""
        return f"ActionHub {response.status_code}: " + "; ".join(parts[:5]) + more
    if isinstance(detail, str):
        return f"ActionHub {response.status_code}: {detail}"
    return f"ActionHub {response.status_code}: {response.text[:200]}"


def _position(loc: Any) -> tuple[int, str | None] | None:
    """(index, canonical field) from a loc like ["body", "assets", 3, "asset_name"], else None."""
    if (isinstance(loc, list) and len(loc) >= 3 and loc[:2] == ["body", "assets"]
            and isinstance(loc[2], int) and not isinstance(loc[2], bool)):
        name = loc[3] if len(loc) > 3 else None
        return loc[2], FIELDS.get(str(name), str(name)) if name is not None else None
    return None


class PagePaginator:
    """Page numbers for ``GET /assets``: stops after the last page by ``total``, on an empty page,
    and refuses a page whose ``page`` is not the one asked for (a server ignoring the parameter
    would otherwise loop forever)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.page = 1
        self.done = False

    def advance(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        items = body.get("items") or []
        if body.get("page", self.page) != self.page:
            raise TransientError(f"ActionHub answered page {body.get('page')} for page {self.page}")
        total = int(body.get("total") or 0)
        if not items or self.page * self.size >= total:
            self.done = True
        self.page += 1
        return items


class ActionHubConnector(BaseConnector):
    """Upserts canonical rows as ActionHub assets, one program per request (module docstring)."""

    spec: ClassVar[VendorSpec]
    settings: ActionHubSettings

    def destination_key(self) -> str:
        """The program setting (path-safe), or ``by-parent`` when every row names its own."""
        program = self.settings.program_id
        if not program:
            return "by-parent"
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", program)[:80]
        if safe != program:  # keep two programs that differ only in unsafe characters apart
            safe += "-" + hashlib.blake2b(program.encode(), digest_size=4).hexdigest()
        return safe

    def auth(self) -> VendorAuth:
        return HeaderAuth({"actionhub-key": self.secret("api_key")})

    def error_message(self, response: httpx.Response) -> str:
        text = parse_error(response)
        if response.status_code == 403:
            program = response.request.headers.get("program-id", "")
            text += f" (the key is wrong, or it does not cover program {program!r})"
        return text

    def classify(self, response: httpx.Response) -> Verdict | None:
        """403 -> stop the run; 422 -> reject the rows its ``loc``s name (none named: the loader
        bisects); 429 -> retry after ``Retry-After``, else the body's window ("10 per 1 second"),
        else ``throttle_wait_seconds``."""
        status = response.status_code
        if status == 403:
            return Verdict(Action.AUTH, self.error_message(response))
        if status == 429 and "retry-after" in response.headers:
            return Verdict(Action.RETRY)  # the header wins (the default handling)
        if status == 429:
            found = _SLOWAPI.search(response.text[:500])  # e.g. "Rate limit exceeded: 10 per 1 second"
            wait = (int(found.group(1)) * _UNIT_SECONDS[found.group(2)] if found
                    else self.settings.throttle_wait_seconds)
            return Verdict(Action.RETRY, retry_after=float(wait))  # capped by the retry policy
        if status == 422:
            body = json_body(response)
            detail = body.get("detail") if isinstance(body, dict) else None
            rows: dict[int, tuple[str | None, str]] = {}
            for error in detail if isinstance(detail, list) else []:
                where = _position(error.get("loc")) if isinstance(error, dict) else None
                if where is None:
                    continue
                index, field_name = where
                reason = f"ActionHub refused {field_name or 'the asset'}: {error.get('msg', '')}"
                if index in rows:  # several problems with one asset: keep them all
                    reason = f"{rows[index][1]}; {error.get('msg', '')}"
                    field_name = rows[index][0]
                rows[index] = (field_name, reason)
            return Verdict(Action.REJECT, self.error_message(response), rows=rows or None)
        return None

    # -- transform (vectorised) ---------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Payload columns ``_program`` and ``_name``. Rejects, first problem only: no program,
        a program with control characters or not in ``programs``, an id over 64 characters, a
        title over 124 (unless ``truncate_names``: then cut, and counted in ``notes``)."""
        s = self.settings
        out = frame.copy()
        program = out["parent"].astype("string")
        if s.program_id:
            program = program.fillna(s.program_id)
        out["_program"] = program
        title = out["title"].astype("string")
        too_long = (title.str.len() > MAX_NAME).fillna(False).astype(bool)
        if s.truncate_names and too_long.any():
            title = title.mask(too_long, title.str.slice(0, MAX_NAME))
        out["_name"] = title
        checks = RowProblems(out.index)

        checks.flag(program.isna(), "parent", "no program: the row has no parent and destination.settings.program_id "
                                       "is not set")
        checks.flag(program.str.contains(_CONTROL.pattern, regex=True), "parent",
             "program id contains control characters")
        if s.programs is not None:
            checks.flag(~program.isin(s.programs), "parent",
                 "program '" + program.fillna("") + "' is not one of the job's programs ("
                 + ", ".join(s.programs) + ")")
        ids = out["id"].astype("string")
        checks.flag(ids.str.len() > MAX_ID, "id", "id is " + ids.str.len().astype("string")
             + f" characters; ActionHub accepts at most {MAX_ID} (asset_id)")
        if not s.truncate_names:
            checks.flag(too_long, "title", "title is " + title.str.len().astype("string")
                 + f" characters; ActionHub accepts at most {MAX_NAME} (asset_name; "
                 "or set truncate_names: true)")
        text_checks(out, s, "ActionHub", checks, title=title)  # characters, and the other fields' lengths
        bad = checks.bad
        rejects = rejects_frame(out[bad], field=checks.field[bad], reason=checks.reason[bad])
        good = out[~bad].reset_index(drop=True)
        if s.truncate_names:
            cut = too_long & ~bad
            if cut.any():
                self.notes[TRUNCATED] += int(cut.sum())
                log.warning("%d title(s) over %d characters truncated (e.g. %s)", int(cut.sum()), MAX_NAME,
                            ", ".join(out.loc[cut, "id"].head(5).astype(str)))
        return good, rejects

    def content(self, row: dict[str, Any]) -> Any:
        return {"program": row["_program"], "asset": self._asset(row)}

    @staticmethod
    def _asset(row: dict[str, Any]) -> dict[str, Any]:
        asset: dict[str, Any] = {"asset_id": str(row["id"])}
        name = row.get("_name")
        if name is not None and name is not pd.NA and not (isinstance(name, float) and math.isnan(name)):
            asset["asset_name"] = str(name)
        tags = row.get("tags")
        iterable = tags is not None and not isinstance(tags, str | float) and hasattr(tags, "__iter__")
        asset["labels"] = [str(t) for t in tags] if iterable else []
        return asset

    def _headers(self, program: str) -> dict[str, str]:
        headers = {"program-id": program}
        if self.settings.api_version:
            headers["api-version"] = self.settings.api_version
        return headers

    @staticmethod
    def _program(unit: Unit) -> str:
        programs = {str(r.data["_program"]) for r in unit.rows}
        assert len(programs) == 1, "a unit holds one program (UnitRule column _program)"
        return programs.pop()

    # -- plan / send ----------------------------------------------------------------------
    def plan(self, unit: Unit) -> Plan:
        """The one POST ``send`` would send (key masked)."""
        headers = {"actionhub-key": "***", **self._headers(self._program(unit)), "Content-Type": "application/json"}
        body = {"assets": [self._asset(r.data) for r in unit.rows]}
        return Plan("upsert", [{"method": "POST", "url": f"{self.base_url}/assets", "headers": headers, "json": body}])

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]:
        """One ``POST /assets`` for the unit (idempotent upsert). A 422 naming positions raises
        ``RejectedError`` with ``rows`` (positions in this unit); one on a header refuses every row."""
        program = self._program(unit)
        body = {"assets": [self._asset(r.data) for r in unit.rows]}
        try:
            http.request("POST", "/assets", json=body, headers=self._headers(program))
        except RejectedError as exc:
            detail = exc.data.get("detail") if isinstance(exc.data, dict) else None
            header = [e for e in detail or [] if isinstance(e, dict) and (e.get("loc") or [None])[0] == "header"]
            if header and not exc.rows:
                why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e.get('msg', '')}" for e in header)
                exc.rows = {i: ("parent", f"ActionHub refused the request for program {program!r}: {why}")
                            for i in range(len(unit.rows))}
            raise
        return [Result(r.id, vendor_id=str(r.id), extra={"program": program}) for r in unit.rows]

    # -- read back ----------------------------------------------------------------------
    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """What ActionHub holds for each row, per program: a search per id (exact ``asset_id``
        among the hits), or one listing of the whole program when that takes fewer requests."""
        found: dict[str, dict[str, Any]] = {}
        by_program: dict[str, list[Row]] = {}
        for row in rows:
            by_program.setdefault(str(row.data.get("_program") or self.settings.program_id), []).append(row)
        size = self.settings.page_size
        for program, members in by_program.items():
            wanted = {r.id for r in members}
            first = self._page(http, program, None, 1)
            if math.ceil(int(first.get("total") or 0) / size) <= len(members):
                assets = self._pages(http, program, None, first)
            else:
                assets = (a for rid in sorted(wanted) for a in self._pages(http, program, rid)
                          if a.get("asset_id") == rid)
            for asset in assets:
                rid = str(asset.get("asset_id"))
                if rid in wanted:
                    found[rid] = {"vendor_id": rid, "asset": asset, "extra": {"program": program}}
        return found

    def _page(self, http: VendorHTTP, program: str, search: str | None, page: int) -> dict[str, Any]:
        params: dict[str, Any] = {"page": page, "size": self.settings.page_size}
        if search is not None:
            params["search"] = search
        body = http.request("GET", "/assets", params=params, headers=self._headers(program)).json()
        return body if isinstance(body, dict) else {}

    def _pages(self, http: VendorHTTP, program: str, search: str | None,
               first: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        pager = PagePaginator(self.settings.page_size)
        while not pager.done:
            body = first if first is not None and pager.page == 1 else self._page(http, program, search, pager.page)
            yield from pager.advance(body)

    def find(self, ids: list[str], program: str | None = None) -> dict[str, dict[str, Any]]:
        """The vendor's asset (as ActionHub returns it) for each id that exists in ``program``
        (default: the ``program_id`` setting)."""
        target = program or self.settings.program_id
        with self.session() as http:
            rows = [Row(id=i, data={"id": i, "_program": target}, index=n) for n, i in enumerate(ids)]
            return {k: v["asset"] for k, v in self.lookup(http, rows).items()}

    def iter_assets(self, program: str | None = None) -> Iterator[dict[str, Any]]:
        """Every asset of ``program`` (default: the ``program_id`` setting), page by page."""
        with self.session() as http:
            yield from self._pages(http, str(program or self.settings.program_id), None)


SPEC = VendorSpec(
    name="actionhub",
    connector="assetferry.connectors.vendors.actionhub:ActionHubConnector",
    default_url="https://api.actionhub.ai",
    credential_keys=("api_key",),
    settings=ActionHubSettings,
    required_columns=("id",),  # metadata only: the doc requires asset_id alone
    unit=UnitRule("chunk", column="_program", size_setting="assets_per_request"),
    idempotent=True,  # POST /assets upserts by asset_id within the program
    batch_size=500,  # a Prefect task carries one full request by default (job batch_size overrides)
    summary="batch upsert of asset metadata by asset_id, one program per request",
)
ActionHubConnector.spec = SPEC
