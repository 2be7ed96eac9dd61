"""The ledger: what was loaded where, crash-safe on any fsspec filesystem; plus the rejects file."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("assetferry.ledger")

#: Statuses are an open set; these are the ones the loader itself writes or reads.
#: ``intent``: a non-idempotent request is about to be sent, its outcome unknown (a crash here
#: means "ask the vendor before sending again"); ``uploaded``/``created``/``queued``: a step of a
#: multi-step load is done at the vendor; ``loaded``: done.
Status = str
INTENT = "intent"
LOADED = "loaded"

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("status", pa.dictionary(pa.int8(), pa.string())),
    ("hash", pa.string()),
    ("file_hash", pa.string()),
    ("vendor_id", pa.string()),
    ("file_ref", pa.string()),
    ("run", pa.dictionary(pa.int32(), pa.string())),
    ("at", pa.timestamp("us", tz="UTC")),
    ("extra", pa.string()),  # JSON object text, or null
])
_PLAIN = pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                    for f in SCHEMA])
MAX_SEGMENTS = 8  # compaction merges every segment into one past this many
STALE_SECONDS = 3600.0  # a journal untouched this long belongs to a finished (or killed) run


@dataclass(frozen=True)
class LedgerEntry:
    """The last known state of one record at one destination.

    ``hash`` covers the metadata sent + the file fingerprint, so an unchanged record is skipped;
    ``file_hash`` alone decides whether a file must be sent again; ``vendor_id`` and ``file_ref``
    are what the vendor answered; ``extra`` holds vendor-specific facts (e.g. a download URL).
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
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent runs."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]


def entry(id: str, status: Status, run: str, **kw: Any) -> LedgerEntry:
    """A ledger entry stamped now."""
    return LedgerEntry(id=id, status=status, run=run, at=_now(), **kw)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Journal lines (dicts) as a table of ``SCHEMA`` (missing keys are null)."""
    cols: dict[str, list[Any]] = {f.name: [] for f in _PLAIN}
    for r in rows:
        for name, values in cols.items():
            v = r.get(name)
            if name == "extra" and v is not None and not isinstance(v, str):
                v = json.dumps(v, separators=(",", ":"), ensure_ascii=False) if v else None
            values.append(v)
    at = pa.array(cols.pop("at"), type=pa.string()).cast(pa.timestamp("us", tz="UTC"))
    arrays = [pa.array(cols[f.name], type=f.type) if f.name != "at" else at for f in _PLAIN]
    return pa.Table.from_arrays(arrays, schema=_PLAIN).cast(SCHEMA)


def _latest(tables: list[pa.Table]) -> pa.Table:
    """One row per id: the last by ``at`` (ties: the later table/line wins)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _table([])
    if len(tables) == 1 and not _has_duplicates(tables[0]):
        return tables[0]
    t = pa.concat_tables([t.cast(SCHEMA) for t in tables], promote_options="default").combine_chunks()
    frame = pd.DataFrame({
        "id": t.column("id").to_numpy(zero_copy_only=False),
        "at": t.column("at").cast(pa.int64()).fill_null(0).to_numpy(),
    })
    frame["pos"] = np.arange(len(frame))
    keep = frame.sort_values(["at", "pos"], kind="stable").drop_duplicates("id", keep="last")["pos"]
    return t.take(pa.array(np.sort(keep.to_numpy())))


def _has_duplicates(t: pa.Table) -> bool:
    ids = t.column("id")
    return len(pa.compute.unique(ids)) != len(ids)


class LedgerIndex:
    """Every record's last state, columnar (about the size of the data), with lookups by id.

    Ids are hashed to uint64 and sorted once, so ``get_many`` is a binary search per id, and no
    Python object is kept per entry. ``len``, ``in`` and ``get`` work like a dict's.
    """

    def __init__(self, table: pa.Table) -> None:
        # one chunk per column: a take() of a batch's rows stays cheap
        self.table = table if all(c.num_chunks <= 1 for c in table.columns) else table.combine_chunks()
        keys = string_keys(self.table.column("id")) if table.num_rows else np.empty(0, dtype=np.uint64)
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, id: object) -> bool:
        return bool(self.get_many([str(id)]))

    def get(self, id: str) -> LedgerEntry | None:
        return self.get_many([id]).get(id)

    def __getitem__(self, id: str) -> LedgerEntry:
        found = self.get(id)
        if found is None:
            raise KeyError(id)
        return found

    def keys(self) -> set[str]:
        """Every id (a Python set: for tests and small ledgers)."""
        return set(self.table.column("id").to_pylist())

    def get_many(self, ids: Iterable[str]) -> dict[str, LedgerEntry]:
        """The entries of those ``ids`` that the ledger knows."""
        wanted = list(ids)
        if not wanted or not len(self._keys):
            return {}
        keys = string_keys(pa.array(wanted, type=pa.string()))
        lo = np.searchsorted(self._keys, keys, side="left")
        hi = np.searchsorted(self._keys, keys, side="right")
        rows: list[int] = []
        for a, b in zip(lo.tolist(), hi.tolist()):
            rows.extend(self._order[a:b].tolist())
        if not rows:
            return {}
        found = self.table.take(pa.array(rows, type=pa.int64())).to_pylist()
        wanted_set = set(wanted)
        return {r["id"]: _entry(r) for r in found if r["id"] in wanted_set}

    def entries(self) -> Iterator[LedgerEntry]:
        for batch in self.table.to_batches(50_000):
            for r in batch.to_pylist():
                yield _entry(r)

    def status_counts(self) -> dict[str, int]:
        if not self.table.num_rows:
            return {}
        counts = pa.compute.value_counts(self.table.column("status").cast(pa.string()))
        return {c["values"].as_py(): c["counts"].as_py() for c in counts}


_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a prime


def string_keys(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit FNV-1a hash per string, computed from Arrow's buffers with numpy (one pass per
    character position, no Python object per string). Equal strings have equal keys; a
    collision only costs a comparison in ``get_many``."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.large_string()) if strings.type != pa.large_string() else strings
    n = len(strings)
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[strings.offset: strings.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, dtype=np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    keys = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    live = np.arange(n)
    with np.errstate(over="ignore"):
        for k in range(int(lengths.max()) if n else 0):
            live = live[lengths[live] > k]
            keys[live] = (keys[live] ^ data[starts[live] + k].astype(np.uint64)) * _MULTIPLIER
    return keys


def _entry(r: dict[str, Any]) -> LedgerEntry:
    at = r.get("at")
    extra = r.get("extra")
    return LedgerEntry(
        id=r["id"], status=r["status"], hash=r.get("hash") or "", file_hash=r.get("file_hash") or "",
        vendor_id=r.get("vendor_id"), file_ref=r.get("file_ref"), run=r.get("run") or "",
        at=at.isoformat(timespec="microseconds") if at is not None else "",
        extra=json.loads(extra) if extra else {},
    )


def wal_root() -> Path:
    """Where write-ahead journals of object-store ledgers live until shipped (a local disk)."""
    return Path(os.environ.get("ASSETFERRY_WAL_DIR") or Path.home() / ".cache" / "assetferry" / "wal")


class Ledger:
    """Append-only journals plus compacted Parquet segments under one folder (local or fsspec URL).

    Layout: ``segments/*.parquet`` (compacted, one row per id each), ``journal/<run>-b<batch>.jsonl``
    (one per batch attempt writer), and a legacy ``snapshot.jsonl`` if an older version wrote one.
    A reader takes all of them; for each id the entry with the latest ``at`` wins (last writer by
    time, not by file name). Writers never modify another writer's file, so several processes can
    write at once.

    Durability: a synchronous journal line (the default; always an ``intent``) is written and
    flushed before the vendor call it precedes or follows returns control, so SIGKILL loses at
    most the line being written (a torn last line is ignored); grouped lines (see
    ``JournalWriter``) may lose their last group, only for idempotent work. On a local disk the journal is the file itself. Object stores cannot append: lines
    go to a local write-ahead file (``wal_root()``) that is shipped to the store when its batch
    ends and read back (shipped) by the next ``load`` on that machine if the run was killed.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.wal_dir = None if self.local else wal_root() / hashlib.sha1(self.url.encode()).hexdigest()[:16]

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _journal_paths(self) -> list[str]:
        return sorted(self.fs.glob(self._path("journal", "*.jsonl")))

    def _segment_paths(self) -> list[str]:
        return sorted(self.fs.glob(self._path("segments", "*.parquet")))

    def _read_lines(self, path: str, fs: Any = None) -> Iterator[dict[str, Any]]:
        with (fs or self.fs).open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn tail of a killed writer: never confirmed
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("ledger %s: skipping an unreadable line", path)

    def _read_journals(self, paths: list[str]) -> list[pa.Table]:
        return [_table(list(self._read_lines(p))) for p in paths]

    def _read_segments(self, paths: list[str]) -> list[pa.Table]:
        out = []
        for p in paths:
            with self.fs.open(p, "rb") as f:
                out.append(pq.read_table(f).cast(SCHEMA))
        return out

    def load(self) -> LedgerIndex:
        """Every record's last state (see ``LedgerIndex``). Ships this machine's leftover
        write-ahead journals of a killed run first."""
        self.fs.invalidate_cache()  # other writers (processes) may have added journals
        self.recover()
        tables = self._read_segments(self._segment_paths())
        legacy = self._path("snapshot.jsonl")
        if self.fs.exists(legacy):
            tables.insert(0, self._read_journals([legacy])[0])
        tables += self._read_journals(self._journal_paths())
        table = _latest(tables)
        tables.clear()
        table = table.combine_chunks()
        index = LedgerIndex(table)
        del table
        pa.default_memory_pool().release_unused()  # give Parquet's decode buffers back
        return index

    # -- the incremental watermark ------------------------------------------------------
    def watermark(self) -> str | None:
        """The newest ``updated_at`` of the last complete full run (ISO text), or None."""
        path = self._path("watermark.json")
        self.fs.invalidate_cache()
        if not self.fs.exists(path):
            return None
        try:
            return json.loads(self.fs.cat_file(path)).get("updated_at")
        except ValueError:
            return None

    def set_watermark(self, updated_at: str, run_id: str) -> None:
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(self._path("watermark.json"),
                          json.dumps({"updated_at": updated_at, "run": run_id, "at": _now()}).encode())

    def _batch_path(self, run_id: str, batch: int) -> str:
        return self._path("journal", f"{run_id}-b{batch:06d}.jsonl")

    def writer(self, run_id: str, batch: int) -> JournalWriter:
        return JournalWriter(self, self._batch_path(run_id, batch))

    def batch_entries(self, run_id: str, batch: int) -> dict[str, LedgerEntry]:
        """What an earlier attempt of this batch (same run) already journaled (last line wins)."""
        self.recover()
        path = self._batch_path(run_id, batch)
        self.fs.invalidate_cache()
        if not self.fs.exists(path):
            return {}
        return {d["id"]: LedgerEntry(**d) for d in self._read_lines(path)}

    # -- object stores: write-ahead files ------------------------------------------------
    def _wal_path(self, path: str) -> Path:
        assert self.wal_dir is not None
        return self.wal_dir / path.rsplit("/", 1)[1]

    def ship(self, local: Path, path: str) -> None:
        """Append a local write-ahead file to the store's journal ``path`` and delete it."""
        data = local.read_bytes()
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]  # a torn tail was never confirmed
        if data:
            self.fs.invalidate_cache()
            existing = self.fs.cat_file(path) if self.fs.exists(path) else b""
            self.fs.pipe_file(path, existing + data)
        local.unlink()

    def recover(self) -> int:
        """Ship write-ahead files left by a killed run of this ledger on this machine. A file
        still locked by a live writer is left alone. Returns how many were shipped."""
        if self.wal_dir is None or not self.wal_dir.exists():
            return 0
        shipped = 0
        for local in sorted(self.wal_dir.glob("*.jsonl")):
            with open(local, "a+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
                self.ship(local, self._path("journal", local.name))
                shipped += 1
        return shipped

    # -- compaction ----------------------------------------------------------------------
    def compact(self, finished_runs: Iterable[str] = (), *, stale_seconds: float = STALE_SECONDS) -> int:
        """Fold journals of finished runs into a new Parquet segment; returns entries written.

        Folds the journals of ``finished_runs`` plus any journal untouched for ``stale_seconds``
        (a killed run's); a journal of a run still writing is never folded, so a concurrent writer
        loses nothing. A run that wrote nothing writes nothing. Past ``MAX_SEGMENTS`` segments,
        all are merged into one (rare, amortised). A crash at any point leaves a readable ledger:
        the same entries may then be in a segment and a journal, which is harmless (latest wins).
        """
        self.fs.invalidate_cache()
        finished = tuple(f"{r}-b" for r in finished_runs)
        now = time.time()
        fold = []
        for path in self._journal_paths():
            name = path.rsplit("/", 1)[1]
            if name.startswith(finished) or now - _mtime(self.fs, path, now) > stale_seconds:
                fold.append(path)
        written = 0
        if fold:
            table = _latest(self._read_journals(fold))
            if table.num_rows:
                self._write_segment(table)
                written = table.num_rows
            for path in fold:
                self.fs.rm(path)
        segments = self._segment_paths()
        legacy = self._path("snapshot.jsonl")
        if len(segments) > MAX_SEGMENTS or (self.fs.exists(legacy) and fold):
            tables = self._read_segments(segments)
            if self.fs.exists(legacy):
                tables.insert(0, self._read_journals([legacy])[0])
            self._write_segment(_latest(tables))
            for path in segments:
                self.fs.rm(path)
            if self.fs.exists(legacy):
                self.fs.rm(legacy)
        return written

    def _write_segment(self, table: pa.Table) -> str:
        name = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:6]
        final = self._path("segments", f"{name}.parquet")
        tmp = self._path("segments", f".{name}.tmp")
        self.fs.makedirs(self._path("segments"), exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        self.fs.mv(tmp, final)
        return final


def _mtime(fs: Any, path: str, default: float) -> float:
    try:
        modified = fs.modified(path)
    except (NotImplementedError, OSError, KeyError):
        return default
    return modified.timestamp() if modified.tzinfo else modified.replace(tzinfo=timezone.utc).timestamp()


#: Grouped journal lines (``record(sync=False)``) are written at the latest after this many
#: lines or this many seconds, before the next synchronous line, at ``flush`` and at ``close``.
GROUP_LINES = 64
GROUP_SECONDS = 1.0


class JournalWriter:
    """Appends ledger lines for one batch of one run; see ``Ledger`` for the durability contract.

    ``record(entry)`` (``sync=True``, the default) writes and flushes the line before it returns
    (locally, or to the write-ahead file of an object-store ledger, shipped at ``close``), after
    any grouped lines before it, so order is kept. ``record(entry, sync=False)`` may hold the
    line back and write it with a group (``GROUP_LINES`` / ``GROUP_SECONDS``, the next
    synchronous line, ``flush``, ``close``): one write + flush per group instead of per line,
    for lines whose loss only means redoing idempotent work. Never group an ``intent``.
    Thread-safe for one writer per batch.
    """

    def __init__(self, ledger: Ledger, path: str) -> None:
        self.ledger = ledger
        self.path = path
        self.written = 0
        self._lock = threading.Lock()
        self._held: list[str] = []  # grouped lines not yet written
        self._held_since = 0.0
        if ledger.local:
            ledger.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._local: Path | None = None
            self._file: Any = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        else:
            self._local = ledger._wal_path(path)
            self._local.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._local, "a", encoding="utf-8")  # noqa: SIM115
            fcntl.flock(self._file, fcntl.LOCK_EX)  # recover() leaves a live writer's file alone

    def record(self, entry: LedgerEntry, *, sync: bool = True) -> None:
        line = entry.to_json() + "\n"
        with self._lock:
            self.written += 1
            if not sync:
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.append(line)
                if len(self._held) < GROUP_LINES and time.monotonic() - self._held_since < GROUP_SECONDS:
                    return
                line = ""
            self._write_locked(line)

    def _write_locked(self, line: str = "") -> None:
        if self._held:
            line = "".join(self._held) + line
            self._held.clear()
        if line:
            self._file.write(line)
            self._file.flush()

    def flush(self) -> None:
        """Write the grouped lines now."""
        with self._lock:
            if self._file is not None:
                self._write_locked()

    def close(self) -> None:
        if self._file is None:
            return
        self.flush()
        if self._local is not None:
            self._file.flush()
            if self.written or self._local.stat().st_size:
                self.ledger.ship(self._local, self.path)
            else:
                self._local.unlink()
        self._file.close()  # releases the lock
        self._file = None

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SAMPLE_ROWS = 20
#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A copy where every text cell of ``columns`` starting with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return is prefixed with ``'`` (shown as text by spreadsheets); other cells and
    non-text columns are unchanged. Vectorised per column."""
    out = frame
    for column in columns:
        values = frame[column]
        if not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)):
            continue
        text = values.astype("string")
        risky = text.str.startswith(FORMULA_STARTS).fillna(False).astype(bool)
        if risky.any():
            if out is frame:
                out = frame.copy()
            out[column] = values.astype(object).where(~risky, "'" + text)
    return out


class RejectsWriter:
    """The run's rejects CSV (``source,row,id,field,reason,record``), written as rows arrive.

    Local rows go to ``<name>.partial`` row by row (a killed run keeps what it found there) and
    replace the previous run's file at ``close``; object stores get the whole file at close.
    Until then the previous run's file stays as it was: a run refused at the start (401, a bad
    manifest) never loses it. A completed run that rejects nothing removes the previous file;
    ``close(failed=True)`` (a run that stopped on an error) keeps it unless this run found rows.
    """

    def __init__(self, url: str, columns: Iterable[str], storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.columns = list(columns)
        self.fs, self.path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.count = 0
        self.sample: list[dict[str, Any]] = []  # the first rows, for the UI
        self._remote_buffer: io.StringIO | None = None
        self._file: Any = None
        self._closed = False
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._partial = self.path + ".partial"
        if "file" in protocols:
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            if os.path.exists(self._partial):  # a killed run's leftovers
                os.unlink(self._partial)
        else:
            self._remote_buffer = io.StringIO()

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self._file is None and self._remote_buffer is None:
            self._file = open(self._partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
        target = self._file if self._file is not None else self._remote_buffer
        frame = neutralise_formulas(frame, [c for c in self.columns if c in frame.columns])
        from assetferry.connectors.core.redact import mask_frame_text

        # URL passwords and signatures (a presigned file URL in ``record``) never reach the file
        frame = mask_frame_text(frame, [c for c in ("source", "id", "field", "reason", "record") if c in frame.columns])
        frame.to_csv(target, columns=self.columns, header=self.count == 0, index=False, quoting=csv.QUOTE_MINIMAL)
        if len(self.sample) < SAMPLE_ROWS:
            keep = [c for c in ("source", "row", "id", "field", "reason") if c in frame.columns]
            self.sample += frame[keep].head(SAMPLE_ROWS - len(self.sample)).to_dict("records")
        if self._file is not None:
            self._file.flush()
        self.count += len(frame)

    def close(self, failed: bool = False) -> None:
        """Publish this run's file in place of the previous one (see the class docstring)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            os.replace(self._partial, self.path)  # atomic: readers see the old file or the new
        elif self._remote_buffer is not None and self.count:
            self.fs.pipe_file(self.path, self._remote_buffer.getvalue().encode("utf-8"))
        elif not self.count and not failed and not self._closed and self.fs.exists(self.path):
            self.fs.rm(self.path)  # nothing rejected this time: the old list is stale
        self._remote_buffer = None
        self._closed = True
