"""The connector contract every vendor implements, and the per-row outcome it returns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import pandas as pd
from pydantic import BaseModel, SecretStr

from connectors.core.ledger import JournalWriter, LedgerEntry

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


class Connector(Protocol):
    """A vendor. Plain Python: no Prefect here.

    - ``prepare`` is vectorised over a canonical frame: vendor checks (rejects) and payload columns.
    - ``load`` sends one batch (rows, groups of rows or one request for all, as the vendor needs),
      records ledger lines before/after each vendor call, and returns one Outcome per row. It
      raises AuthError to stop the run and TransientError when the vendor looks down (the batch
      is retried later; rows already loaded are skipped through the journal).
    - ``plan`` returns exactly the requests ``load`` would send, without sending (dry run).
    - ``lookup`` asks the vendor what it holds for some record ids (reconcile, verify).
    """

    name: ClassVar[str]
    default_url: ClassVar[str]
    credential_keys: ClassVar[tuple[str, ...]]
    Settings: ClassVar[type[BaseModel]]

    def destination_key(self) -> str: ...

    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]: ...

    def load(
        self, frame: pd.DataFrame, priors: dict[str, LedgerEntry], journal: JournalWriter, run_id: str
    ) -> list[Outcome]: ...

    def plan(self, frame: pd.DataFrame, priors: dict[str, LedgerEntry]) -> Iterator[dict[str, Any]]: ...

    def lookup(self, ids: list[str]) -> dict[str, dict[str, Any]]: ...


class ConnectorFactory(Protocol):
    name: ClassVar[str]
    default_url: ClassVar[str]
    credential_keys: ClassVar[tuple[str, ...]]
    Settings: ClassVar[type[BaseModel]]

    def __call__(
        self, *, url: str | None, settings: dict[str, Any], credentials: dict[str, SecretStr] | None,
        file_options: dict[str, Any] | None = None,
    ) -> Connector: ...
