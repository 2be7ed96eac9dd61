"""Drift check, generic: what the vendor holds now against what the ledger says was loaded.

A connector that supports it has ``remote_records(http)``, yielding one dict per record the
vendor holds: ``key`` (how the vendor names the record, e.g. Kontent's external id),
``vendor_id`` and ``digest`` (a digest of the fields the load controls, as the vendor shows
them; the connector stores the same digest as ``extra.remote`` in the ledger when it loads), and
optionally ``record_key(record_id, entry)`` (the vendor key of a record; default: its id).
Sends only reads. ``mark_missing`` journals the missing rows as ``missing`` so that the next run
sends them again (a loaded status is what makes a run skip an unchanged row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.ledger import Ledger, LedgerIndex, entry, new_run_id

MISSING = "missing"


@dataclass
class Drift:
    loaded: int = 0  # records the ledger says are at the vendor
    in_sync: int = 0
    missing: list[str] = field(default_factory=list)  # loaded, no longer at the vendor (deleted there)
    changed: list[str] = field(default_factory=list)  # at the vendor, edited there since the load
    extra: list[str] = field(default_factory=list)  # vendor keys the ledger does not know

    @property
    def clean(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


def drift(connector: Any, index: LedgerIndex) -> Drift:
    """Compare the vendor's listing with the ledger's loaded records."""
    listing = getattr(connector, "remote_records", None)
    if listing is None:
        raise ConfigError(f"{connector.spec.name} cannot list what it holds: verify is not supported")
    done = set(connector.spec.done_statuses)
    loaded = {i: e for i, e in index.get_many(index.keys()).items() if e.status in done}
    key_of = getattr(connector, "record_key", lambda record_id, _entry: record_id)
    by_key = {key_of(i, e): i for i, e in loaded.items()}
    report = Drift(loaded=len(loaded))
    seen: set[str] = set()
    with connector.session() as http:
        for item in listing(http):
            rid = by_key.get(item.get("key"))
            if rid is None:
                report.extra.append(str(item.get("key") or item.get("vendor_id")))
                continue
            seen.add(rid)
            want = (loaded[rid].extra or {}).get("remote")
            if want and item.get("digest") and item["digest"] != want:
                report.changed.append(rid)
            else:
                report.in_sync += 1
    report.missing = sorted(set(loaded) - seen)
    report.changed.sort()
    report.extra.sort()
    return report


def mark_missing(ledger: Ledger, index: LedgerIndex, ids: list[str]) -> None:
    """Journal ``missing`` for these records (keeping what the ledger knew) so the next run
    sends them again."""
    if not ids:
        return
    run_id = new_run_id()
    with ledger.writer(run_id, 0) as journal:
        for rid, e in index.get_many(ids).items():
            journal.record(entry(rid, MISSING, run_id, hash="", file_hash=e.file_hash, vendor_id=None,
                                 file_ref=e.file_ref, extra={k: v for k, v in (e.extra or {}).items() if k != "remote"}))
    ledger.compact([run_id])
