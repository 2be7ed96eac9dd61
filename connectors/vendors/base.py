"""The vendor surface: a spec (what the core needs to know), the connector contract, and the
small types that pass between the loader and a connector."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import httpx
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from assetferry.connectors.core.files import FileInfo, FileStore
from assetferry.connectors.core.http import RetryPolicy, Verdict, VendorAuth, VendorHTTP
from assetferry.connectors.core.ledger import Ledger, LedgerEntry
from assetferry.connectors.core.ratelimit import Window, shared_limiter

OutcomeStatus = Literal["loaded", "unchanged", "rejected", "failed", "pending"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one row. Every row of a batch ends in exactly one outcome:
    loaded, unchanged, rejected (with a reason; resending cannot help), failed (transient; the
    next run retries it) or pending (a vendor quota stopped the run; the next run continues)."""

    id: str
    status: OutcomeStatus
    reason: str = ""
    field: str | None = None
    vendor_id: str | None = None
    bytes_sent: int = 0


@dataclass(frozen=True)
class UnitRule:
    """How rows form one vendor request ("unit"): ``row`` (one row each), ``group`` (all rows
    sharing ``column``'s value, never split across requests, batches or tasks), or ``chunk``
    (up to ``size_setting`` rows of the settings, e.g. a batch upsert of 500). A ``chunk`` with
    a ``column`` never mixes two values of that column in one request: the rows of each value
    are chunked on their own (e.g. one program per request); unlike ``group``, a value's rows
    may span several requests and batches."""

    kind: Literal["row", "group", "chunk"] = "row"
    column: str | None = None
    size_setting: str | None = None


RATE_FIELDS = ("requests_per_second", "requests_per_minute", "requests_per_hour", "requests_per_day")


@dataclass(frozen=True)
class VendorSpec:
    """Everything the core needs to know about a vendor; the registry lists one per vendor.

    ``required_columns``: canonical columns a row must have (``file`` only for vendors with files).
    ``idempotent``: resending a request can never duplicate anything (an upsert). When False, the
    loader journals ``intent`` before each send and, on resume, asks the vendor (``lookup``)
    before sending an ``intent`` row again. The documented rate limits are the defaults of the
    settings' rate fields (``rate_limits`` reads them: one place to change them); hour and day
    windows are allowances: when spent the run stops with the rest pending instead of waiting.
    ``done_statuses``: ledger statuses that mean the row is at the vendor (skipped when unchanged).
    """

    name: str
    connector: str  # "module:Class"
    default_url: str
    credential_keys: tuple[str, ...]
    settings: type[BaseModel]
    required_columns: tuple[str, ...] = ("id", "file")
    unit: UnitRule = UnitRule()
    idempotent: bool = True
    done_statuses: tuple[str, ...] = ("loaded",)
    summary: str = ""
    batch_size: int = 50  # rows per Prefect task when the job does not say (a batch API: its request size)

    @property
    def files(self) -> bool:
        return "file" in self.required_columns

    @property
    def rate_limits(self) -> dict[str, float]:
        """The documented limits: the defaults of the settings' rate fields."""
        fields = self.settings.model_fields
        return {n: fields[n].default for n in RATE_FIELDS if n in fields and fields[n].default is not None}


class CheckSettings(BaseModel):
    """Checks on what a vendor receives, made before anything is sent (``text_checks``,
    ``empty_file``). Each vendor sets its documented limits as defaults; where its docs are
    silent these are sane bounds, adjustable per job."""

    max_title_chars: int = Field(default=1000, ge=1, le=100_000,
                                 description="longest title accepted (characters); longer rows are rejected")
    max_text_chars: int = Field(default=10_000, ge=1, le=10_000_000,
                                description="longest value of any other text field (description, extra "
                                            "columns), in characters; longer rows are rejected")
    max_file_name_chars: int = Field(default=255, ge=1, le=4096,
                                     description="longest file_name accepted (characters)")
    reject_empty_files: bool = Field(default=False, description="reject 0-byte files instead of sending them "
                                                                "(they are counted as a warning either way)")


#: Control characters no title or file name should carry (C0, DEL, C1) and bidi overrides that
#: make a name read differently than it is; free text may keep tabs and line breaks.
_NAME_CONTROL = "[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
_TEXT_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
#: Columns whose checks are someone else's: the id (records), file locations, our own columns.
_UNCHECKED = ("id", "file", "updated_at", "tags", "content_type")
EMPTY_FILES = "empty files (0 bytes) sent"
EMPTY_REJECT = "file is empty (0 bytes; destination.settings.reject_empty_files is on)"
_checks_log = logging.getLogger("assetferry.checks")


def text_checks(frame: pd.DataFrame, settings: CheckSettings, vendor: str, checks: Any,
                title: pd.Series | None = None) -> None:
    """Flag (``checks``: a ``RowProblems``) the rows whose text the vendor should not receive: a
    title over ``max_title_chars``, a file_name over ``max_file_name_chars``, any other text value
    over ``max_text_chars``, control characters (names: any; free text: all but tab and line
    breaks). ``title``: the title as the vendor will send it (default: the column). Vectorised;
    the reason names the setting to change."""
    columns: list[tuple[str, pd.Series]] = []
    if title is not None:
        columns.append(("title", title))
    for name in frame.columns:
        if str(name).startswith("_") or name in _UNCHECKED or (name == "title" and title is not None):
            continue
        columns.append((str(name), frame[name]))
    for name, values in columns:
        text = _text_only(values)
        if not text.notna().any():
            continue
        limit, setting = {"title": (settings.max_title_chars, "max_title_chars"),
                          "file_name": (settings.max_file_name_chars, "max_file_name_chars")}.get(
            name, (settings.max_text_chars, "max_text_chars"))
        length = text.str.len()
        checks.flag((length > limit).fillna(False), name,
                    f"{name} is " + length.astype("string").fillna("") + f" characters; {vendor} accepts at most "
                    f"{limit} (destination.settings.{setting})")
        pattern = _NAME_CONTROL if name in ("title", "file_name", "parent", "language") else _TEXT_CONTROL
        bad = text.str.contains(pattern, regex=True).fillna(False)
        if bad.any():
            checks.flag(bad, name, f"{name} contains control characters")


def _text_only(values: pd.Series) -> pd.Series:
    """The string values of a column (anything else NA), as a string Series."""
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        return values.astype("string")
    if values.dtype != object:
        return pd.Series(pd.NA, index=values.index, dtype="string")
    return values.map(lambda v: v if isinstance(v, str) else None).astype("string")


class RateSettings(CheckSettings):
    """The rate-limit fields every vendor's settings share (defaults: the vendor's documented
    limits, set by each vendor's subclass). None = no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float | None = Field(default=None, gt=0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    requests_per_hour: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)
    #: Requests of one batch in flight at once (independent units sent from this many threads),
    #: so a round trip no longer caps the rate; the limiter still paces them all. 1 = one unit
    #: after another. The job's ``concurrency`` (batches at once) multiplies it.
    inflight: int = Field(default=4, ge=1, le=64)


@dataclass
class Row:
    """One row on its way through the loader: the prepared row (``data``), its file's stat,
    the ledger's prior entry, and the hashes the loader computed."""

    id: str
    data: dict[str, Any]
    index: int
    info: FileInfo | None = None
    prior: LedgerEntry | None = None
    hash: str = ""
    file_hash: str = ""
    reconcile: bool = False  # an ``intent`` from a killed run: the loader asked the vendor

    @property
    def vendor_id(self) -> str | None:
        return self.prior.vendor_id if self.prior else None


@dataclass
class Unit:
    """The rows of one vendor request (see ``UnitRule``)."""

    rows: list[Row]
    key: str | None = None
    depth: int = 0  # how many times the loader split it to isolate a bad row
    origin: int | None = None  # the unit it was split from (bounds the splitting)
    run_id: str | None = None  # the run sending it (None in a dry run): per-run caches key on it
    rechecks: int = 0  # how many times it was looked up after a failed non-idempotent send

    @property
    def rechecked(self) -> bool:
        """Already looked up after a failed non-idempotent send."""
        return self.rechecks > 0


@dataclass
class Result:
    """A connector's answer for one row of a sent unit: ``loaded`` (with what the vendor
    answered), a status of the vendor's (e.g. ``queued`` until a finish step), or ``rejected``
    with a reason when a successful response still refused this row."""

    id: str
    status: str = "loaded"
    vendor_id: str | None = None
    file_ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    bytes_sent: int = 0
    reason: str = ""
    field: str | None = None


#: What a connector calls to journal a step of a multi-step load (e.g. ``uploaded`` with the
#: file reference) before going on; the loader writes it durably at once.
Checkpoint = Callable[[Row, str, dict[str, Any]], None]


@dataclass(frozen=True)
class Plan:
    """What ``send`` would do for a unit: an action name (per vendor: ``upload+upsert``,
    ``create``, ``link``...) and the exact requests (secrets masked, file bodies described)."""

    action: str
    requests: list[dict[str, Any]]


class Connector(Protocol):
    """A vendor's API and nothing else (no ledger, no outcomes, no retries beyond HTTP): plain
    Python, no Prefect. The generic loader (``connectors.core.loader``) calls it.

    - ``prepare``: vectorised checks and payload columns over a canonical frame -> (ready, rejects).
    - ``content``: the JSON-able metadata that defines "changed" for a row (hashed with the file
      fingerprint by the loader).
    - ``check``: an optional per-row check once the file is stat'ed -> (field, reason) or None.
    - ``session``: a ``VendorHTTP`` with auth, limiter and classifier (one per batch).
    - ``send``: the requests of one unit; returns one ``Result`` per row, or raises
      ``RejectedError`` (``rows`` by position when the vendor names them), ``QuotaExhausted``,
      ``AuthError`` or ``TransientError``. Calls ``checkpoint`` after each intermediate step.
    - ``plan``: exactly what ``send`` would send, without sending (dry run).
    - ``lookup``: what the vendor holds for some rows (reconcile, verify): id -> vendor facts
      with at least ``vendor_id``.
    - ``classify``: read an error answer's body -> ``Verdict`` (None: the default status table).
    - ``finish``: optional step after every batch (e.g. start a vendor job and poll it).
    """

    spec: ClassVar[VendorSpec]
    settings: Any
    files: FileStore

    def destination_key(self) -> str: ...

    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]: ...

    def content(self, row: dict[str, Any]) -> Any: ...

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None: ...

    def session(self) -> VendorHTTP: ...

    def send(self, http: VendorHTTP, unit: Unit, checkpoint: Checkpoint) -> list[Result]: ...

    def plan(self, unit: Unit) -> Plan: ...

    def lookup(self, http: VendorHTTP, rows: list[Row]) -> dict[str, dict[str, Any]]: ...

    def classify(self, response: httpx.Response) -> Verdict | None: ...

    def finish(self, http: VendorHTTP, run_id: str) -> dict[str, Any] | None: ...


class BaseConnector:
    """Optional defaults for a connector: keeps url/settings/credentials, builds the HTTP session
    from ``auth()`` and the rate settings, and no-op ``check``/``classify``/``finish``."""

    spec: ClassVar[VendorSpec]
    #: The job's ledger while ``finish`` runs (set by the finish task; None elsewhere), so a
    #: finish step can read the rows waiting for it and journal what became of them.
    ledger: Ledger | None = None
    #: A rate budget shared across processes (``connectors.core.budget.Budgets``; set by the load
    #: task when the job shares its budget): ``session`` puts the local limiter behind it.
    budgets: Any = None

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
        self.settings = self.spec.settings.model_validate(settings)
        self.base_url = (url or self.spec.default_url).rstrip("/")
        self._credentials = credentials or {}
        self.file_options = file_options
        self.files = FileStore(file_options)
        self.policy = policy
        self.transport = transport
        #: What ``prepare`` changed without rejecting (e.g. names truncated to the vendor's
        #: limit), counted per kind; the run's summary reports it (``extra["notes"]``).
        self.notes: Counter[str] = Counter()

    # -- to override ------------------------------------------------------------------------
    def destination_key(self) -> str:
        return "default"

    def auth(self) -> VendorAuth:
        raise NotImplementedError

    def error_message(self, response: httpx.Response) -> str:
        return f"{self.spec.name} {response.status_code}: {response.text[:300]}"

    def check(self, row: dict[str, Any], info: FileInfo) -> tuple[str | None, str] | None:
        return self.empty_file(info, row)

    def empty_file(self, info: FileInfo | None, row: dict[str, Any] | None = None) -> tuple[str | None, str] | None:
        """For a 0-byte file: a rejection when ``reject_empty_files`` is set, else None (it is
        counted in ``notes`` and logged: a warning in the summary)."""
        if info is None or info.size != 0:
            return None
        rejected = self.empty_files(pd.Series([0]), [(row or {}).get("id", "?")])
        return ("file", EMPTY_REJECT) if rejected[0] else None

    def empty_files(self, size: pd.Series, ids: Any) -> Any:
        """``empty_file`` over a column of sizes (``ids``: the rows' ids, for the log): a boolean
        array, True where the row is rejected (0 bytes and ``reject_empty_files``); otherwise the
        0-byte rows are counted in ``notes`` and logged, once each."""
        empty = (size == 0).fillna(False).to_numpy(dtype=bool)
        if getattr(self.settings, "reject_empty_files", False):
            return empty
        if empty.any():
            self.notes[EMPTY_FILES] += int(empty.sum())
            for row_id in pd.Series(list(ids))[empty].tolist():
                _checks_log.warning("row %s: its file is empty (0 bytes) and is sent as it is "
                                    "(destination.settings.reject_empty_files: true rejects such rows)", row_id)
        return np.zeros(len(empty), dtype=bool)

    def classify(self, response: httpx.Response) -> Verdict | None:
        return None

    def finish(self, http: VendorHTTP, run_id: str) -> dict[str, Any] | None:
        return None

    def preflight(self, http: VendorHTTP) -> None:
        """Optional: read what the destination defines (e.g. its languages, folders) so that
        ``prepare`` can reject rows referring to what does not exist before anything is sent.
        Called by ``validate --check-vendor`` when the credentials resolve; no-op by default.
        Raises AuthError/ConfigError when the destination refuses."""
        return None

    # -- shared ---------------------------------------------------------------------------
    def secret(self, key: str) -> str:
        from assetferry.connectors.core.errors import ConfigError

        value = self._credentials.get(key)
        if value is None:
            raise ConfigError(f"{self.spec.name} needs credentials.{key}")
        return value.get_secret_value()

    def windows(self) -> tuple[list[Window], list[Window]]:
        """(paced windows, allowance windows) from the rate settings."""
        s = self.settings
        paced, allowance = [], []
        per_second = getattr(s, "requests_per_second", None)
        if per_second:
            # a fractional rate (0.5/s) is a window of one request per 1/rate seconds
            paced.append(Window(int(per_second), 1.0) if per_second >= 1 else Window(1, 1.0 / per_second))
        if getattr(s, "requests_per_minute", None):
            paced.append(Window(s.requests_per_minute, 60.0))
        if getattr(s, "requests_per_hour", None):
            allowance.append(Window(s.requests_per_hour, 3600.0))
        if getattr(s, "requests_per_day", None):
            allowance.append(Window(s.requests_per_day, 86400.0))
        return paced, allowance

    def min_interval(self) -> float:
        """Seconds between two sends (even spacing under a per-second limit; 0: none)."""
        per_second = getattr(self.settings, "requests_per_second", None)
        return 1.0 / per_second if per_second else 0.0

    def session(self) -> VendorHTTP:
        paced, allowance = self.windows()
        limiter = shared_limiter(f"{self.spec.name}:{self.base_url}:{self.destination_key()}", paced,
                                 allowances=allowance, min_interval=self.min_interval())
        if self.budgets is not None:
            limiter = self.budgets.wrap(limiter, self.spec.name, self.destination_key(), paced,
                                        min_interval=self.min_interval())
        # One connection pool per vendor budget and credential per process, reused by every
        # batch (building a client + SSL context per batch was 11 % of a run's samples).
        creds = hashlib.sha256("\0".join(f"{k}={getattr(v, 'get_secret_value', lambda v=v: v)()}"
                                          for k, v in sorted(self._credentials.items())).encode()).hexdigest()[:16]
        return VendorHTTP(self.base_url, auth=self.auth(), limiter=limiter, policy=self.policy,
                          classify=self.classify, error_parser=self.error_message,
                          transport=self.transport, headers={"Accept": "application/json"},
                          pool_key=f"{self.spec.name}:{self.destination_key()}:{creds}")
