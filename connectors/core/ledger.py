"""The ledger: what was loaded where, crash-safe, on any fsspec filesystem; plus the rejects file."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import fsspec
import pandas as pd

log = logging.getLogger("assetferry.ledger")

Status = Literal["intent", "uploaded", "loaded"]


@dataclass(frozen=True)
class LedgerEntry:
    """The last known state of one record at one destination.

    ``intent``: a request is about to be sent and its outcome is not confirmed (a crash here means
    "ask the vendor or resend idempotently"); ``uploaded``: the file is at the vendor but the asset
    metadata is not confirmed; ``loaded``: done. ``hash`` covers metadata + file fingerprint, so an
    unchanged record is skipped; ``file_hash`` alone decides whether the file must be sent again.
    """

    id: str
    status: Status
    hash: str = ""
    file_hash: str = ""
    vendor_id: str | None = None
    file_ref: str | None = None
    run: str = ""
    at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, "", {})}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent runs."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]


class Ledger:
    """Append-only journals plus a compacted snapshot under one folder (local path or fsspec URL).

    Layout: ``snapshot.jsonl`` and ``journal/<run>-b<batch>.jsonl``. Readers take the snapshot,
    then every journal in name order; the last line for an id wins. Writers never modify another
    writer's file, so several processes (Dask workers later) can write at once. On a local disk a
    journal line is written and flushed before the vendor call returns control, so SIGKILL loses
    at most the line being written (a torn last line is ignored). On object stores (no append), a
    journal is written whole when its batch ends, so a kill there re-sends that batch's rows,
    which every connector must tolerate (idempotent send, or reconcile from ``intent``).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _journal_paths(self) -> list[str]:
        pattern = self._path("journal", "*.jsonl")
        return sorted(self.fs.glob(pattern))

    def _read_lines(self, path: str) -> Iterator[dict[str, Any]]:
        with self.fs.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn tail of a killed writer: never confirmed
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("ledger %s: skipping an unreadable line", path)

    def load(self) -> dict[str, LedgerEntry]:
        """Every record's last state. Memory: one entry per distinct record id."""
        self.fs.invalidate_cache()  # other writers (processes) may have added journals
        entries: dict[str, LedgerEntry] = {}
        paths = [self._path("snapshot.jsonl")] if self.fs.exists(self._path("snapshot.jsonl")) else []
        for path in paths + self._journal_paths():
            for data in self._read_lines(path):
                entries[data["id"]] = LedgerEntry(**data)
        return entries

    def _batch_path(self, run_id: str, batch: int) -> str:
        return self._path("journal", f"{run_id}-b{batch:06d}.jsonl")

    def writer(self, run_id: str, batch: int) -> JournalWriter:
        return JournalWriter(self, self._batch_path(run_id, batch))

    def batch_entries(self, run_id: str, batch: int) -> dict[str, LedgerEntry]:
        """What an earlier attempt of this batch (same run) already journaled."""
        path = self._batch_path(run_id, batch)
        if not self.fs.exists(path):
            return {}
        return {d["id"]: LedgerEntry(**d) for d in self._read_lines(path)}

    def compact(self) -> int:
        """Fold the journals into the snapshot (write new, then swap, then drop the journals).

        A crash at any point leaves a readable ledger: the old snapshot plus journals, or the new
        snapshot plus journals it already contains (re-applying them is harmless: last wins).
        Call it only when no other writer is active for this ledger.
        """
        journals = self._journal_paths()
        if not journals:
            return 0
        entries = self.load()
        tmp = self._path(f"snapshot.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open(tmp, "wt", encoding="utf-8") as f:
            for entry in entries.values():
                f.write(entry.to_json() + "\n")
        self.fs.mv(tmp, self._path("snapshot.jsonl"))
        for path in journals:
            self.fs.rm(path)
        return len(entries)


class JournalWriter:
    """Appends ledger lines for one batch of one run; see ``Ledger`` for the durability contract."""

    def __init__(self, ledger: Ledger, path: str) -> None:
        self.ledger = ledger
        self.path = path
        self._buffer: list[str] = []
        self._file: Any = None
        if ledger.local:
            ledger.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, entry: LedgerEntry) -> None:
        line = entry.to_json() + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._buffer.append(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._buffer:
            existing = ""
            if self.ledger.fs.exists(self.path):  # a Prefect retry of the same batch
                existing = self.ledger.fs.cat_file(self.path).decode("utf-8")
            self.ledger.fs.pipe_file(self.path, (existing + "".join(self._buffer)).encode("utf-8"))
            self._buffer = []

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def entry(id: str, status: Status, run: str, **kw: Any) -> LedgerEntry:
    """A ledger entry stamped now."""
    return LedgerEntry(id=id, status=status, run=run, at=_now(), **kw)


class RejectsWriter:
    """The run's rejects CSV (``source,row,id,field,reason,record``), written as rows arrive.

    Local files grow row by row (a killed run keeps what it found); object stores get the whole
    file at close. A run that rejects nothing leaves no file and removes the previous run's.
    """

    def __init__(self, url: str, columns: Iterable[str], storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.columns = list(columns)
        self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.count = 0
        self._remote_buffer: io.StringIO | None = None
        self._file: Any = None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if self.fs.exists(self.path):
            self.fs.rm(self.path)
        if "file" in protocols:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        else:
            self._remote_buffer = io.StringIO()

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self._file is None and self._remote_buffer is None:
            self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        target = self._file if self._file is not None else self._remote_buffer
        frame.to_csv(target, columns=self.columns, header=self.count == 0, index=False, quoting=csv.QUOTE_MINIMAL)
        if self._file is not None:
            self._file.flush()
        self.count += len(frame)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._remote_buffer is not None and self.count:
            self.fs.pipe_file(self.path, self._remote_buffer.getvalue().encode("utf-8"))
            self._remote_buffer = None
