"""Extract -> canonicalize -> window -> vendor prepare -> batches; plain Python shared by the
Prefect flow, ``validate`` and ``--dry-run`` (which must answer without starting Prefect)."""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from assetferry.connectors.core.credentials import resolve_credentials, resolve_options
from assetferry.connectors.core.fetchurls import FetchableURLs
from assetferry.connectors.core.files import AccessPolicy, FileStore, resolve_paths
from assetferry.connectors.core.job import JobSpec
from assetferry.connectors.core.ledger import Ledger, RejectsWriter
from assetferry.connectors.core.records import (
    REJECT_COLUMNS,
    DuplicateTracker,
    canonicalize,
    check_columns,
    in_window,
    parse_window,
    rejects_frame,
)
from assetferry.connectors.sources.manifest import ManifestSource
from assetferry.connectors.vendors import vendor_class
from assetferry.connectors.vendors.base import Connector
from pydantic import SecretStr

GROUP_BUCKETS = 16  # grouped vendors spill rows into this many buckets by group key


def batch_sizes(size: int, concurrency: int) -> Iterator[int]:
    """Sizes of a run's batches: the first ``concurrency - 1`` are staggered (``size * k /
    concurrency`` for k = 1 ..), the rest are ``size``.

    Batches that run at once share one vendor budget, so they advance at the same pace; batches
    of equal size would then also end together, and while they all wind down (their last units
    answered one round trip after another, no new batch started yet) nothing else is in flight:
    at 150 ms round trips and a 40/s limit that idle cost 4 % of the limit (``bench/throughput.py``).
    Staggered ends keep the other batches sending across every batch boundary."""
    size = max(1, size)
    for k in range(1, max(1, concurrency)):
        yield max(1, size * k // concurrency)
    while True:
        yield size


def make_connector(job: JobSpec, credentials: dict[str, SecretStr] | None = None) -> Connector:
    """The job's connector. ``credentials`` None = resolve the job's references now (env/secret)."""
    cls = vendor_class(job.destination.vendor)
    if credentials is None:
        credentials = resolve_credentials(job.destination.credentials)
    connector = cls(url=job.destination.url, settings=job.destination.settings, credentials=credentials,
                    file_options=resolve_options(job.source.options))
    files = getattr(connector, "files", None)
    if isinstance(files, FileStore):  # checked again at stat and open (links resolved then)
        files.policy = access_policy(job)
    for value in vars(connector).values():  # files the vendor fetches by URL: never an unallowed one
        if isinstance(value, FetchableURLs):
            value.policy = access_policy(job)
    return connector


def manifest_source(job: JobSpec) -> ManifestSource:
    """The job's manifest as a source, with its read options (encoding, delimiter, bad lines)."""
    src = job.source
    return ManifestSource(src.url, format=src.format, options=resolve_options(src.options), columns=src.columns,
                          encoding=src.encoding, delimiter=src.delimiter, on_bad_lines=src.on_bad_lines)


def access_policy(job: JobSpec) -> AccessPolicy:
    """Where the job's asset files may be read from (``source.allowed_roots``/``allowed_hosts``)."""
    src = job.source
    return AccessPolicy.build(src.url, src.allowed_roots, src.allowed_hosts)


_SEEN_MAX = 100_000  # files whose early policy answer a pipeline remembers

#: A media type as HTTP carries it: printable ASCII, ``type/subtype`` (parameters allowed).
_MEDIA_TYPE = r"^[!-~]+/[!-~]+(?:\s*;[ -~]*)?$"


def trust_rejects(good: pd.DataFrame, policy: AccessPolicy | None,
                  seen: dict[str, str | None] | None = None) -> pd.Series:
    """Per row, ``"field\x00reason"`` for a row that must not go further (a file outside the
    allowed roots or hosts, a content type no HTTP header can carry), else NA. Vectorised; reads
    nothing, contacts nothing. ``seen`` remembers each file's answer across chunks (this is the
    early filter only: the file store checks again, links resolved anew, at stat and at open)."""
    out = pd.Series(pd.NA, index=good.index, dtype="string")
    if policy is not None and "file" in good.columns and seen is not None:
        files = good["file"].astype("string")
        present = files.notna()
        for url in files[present].unique():
            if url not in seen:
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                seen[url] = policy.reason(str(url))
        reason = pd.Series(pd.NA, index=good.index, dtype="string")
        reason[present] = files[present].map(seen).astype("string")
        hit = reason.notna()
        out[hit] = "file\x00not allowed: " + reason[hit]
    elif policy is not None and "file" in good.columns:
        reason = policy.check(good["file"])
        hit = reason.notna()
        out[hit] = "file\x00not allowed: " + reason[hit]
    if "content_type" in good.columns:
        types = good["content_type"].astype("string")
        bad = types.notna() & ~types.str.match(_MEDIA_TYPE).fillna(False).astype(bool) & out.isna()
        out[bad] = "content_type\x00not a valid media type (printable ASCII type/subtype)"
    return out


def state_options(job: JobSpec) -> dict[str, Any] | None:
    """Storage options for the state folder: the source's, when the state is remote too."""
    return resolve_options(job.source.options) if "://" in job.state else None


def state_url(job: JobSpec, connector: Connector) -> str:
    """``<state>/<job>/<vendor>-<destination key>``: one ledger per job and destination."""
    return f"{job.state.rstrip('/')}/{job.name}/{job.destination.vendor}-{connector.destination_key()}"


@dataclass
class Counts:
    read: int = 0
    outside_window: int = 0  # outside --since/--until, or before the incremental watermark
    rejected: int = 0
    ready: int = 0
    newest: pd.Timestamp | None = None  # the latest updated_at read (the next watermark)


@dataclass
class Pipeline:
    """Streams a job's source as ready-to-load batches, collecting rejects on the way.

    Memory is bounded by one source chunk plus one batch, whatever the manifest size (the
    duplicate tracker keeps 24 bytes per distinct id: 24 MB for a million rows). A vendor whose requests group rows by a
    column (``UnitRule.kind == "group"``) gets whole groups in one batch even when a group's rows
    are scattered over the manifest: rows are spilled to temporary files in buckets by group key
    and each bucket is read back alone, so memory is bounded by one bucket (about 1/16 of the rows).
    """

    job: JobSpec
    connector: Connector
    since: str | None = None
    until: str | None = None
    limit: int | None = None
    chunk_rows: int = 10_000
    counts: Counts = field(default_factory=Counts)
    watermark: pd.Timestamp | None = None  # incremental: skip rows updated before it (rows without updated_at stay)

    def __post_init__(self) -> None:
        self.window = parse_window(self.since, self.until)
        self.source = manifest_source(self.job)
        self.policy = access_policy(self.job)

    def prepared(self) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        """(ready rows, rejected rows) per source chunk, after the window and the limit.

        Rows rejected while parsing (``RecordChunk.rejects``) count as read and rejected. Raises
        ``ConfigError`` once, before any row of a file, when that file lacks a required column."""
        tracker = DuplicateTracker()
        checked: set[str] = set()
        seen: dict[str, str | None] = {}  # each file's early policy answer, once per run
        for chunk in self.source.chunks(self.chunk_rows):
            if self.limit is not None and self.counts.ready >= self.limit:
                return
            spec = self.connector.spec
            if chunk.source not in checked and len(chunk.frame.columns):
                # CSV and Parquet have one header per file; JSON's columns are those of its first rows
                check_columns(chunk, spec.required_columns)
                checked.add(chunk.source)
            self.counts.read += chunk.rows_read
            good, rejects = canonicalize(chunk, tracker, spec.required_columns)
            if chunk.rejects is not None and len(chunk.rejects):
                rejects = pd.concat([chunk.rejects, rejects], ignore_index=True) if len(rejects) else chunk.rejects
            if spec.files and len(good):
                good["file"] = resolve_paths(good["file"], good["_source"])
            if len(good):  # before any stat: a refused file is never read, no host contacted
                refused = trust_rejects(good, self.policy if spec.files else None, seen)
                hit = refused.notna().to_numpy(dtype=bool)
                if hit.any():
                    parts = refused[hit].str.split("\x00", n=1, expand=True)
                    found = rejects_frame(good[hit], field=parts[0], reason=parts[1])
                    rejects = pd.concat([rejects, found], ignore_index=True) if len(rejects) else found
                    good = good[~hit].reset_index(drop=True)
            if len(good) and good["updated_at"].notna().any():
                newest = good["updated_at"].max()
                self.counts.newest = newest if self.counts.newest is None else max(self.counts.newest, newest)
            if self.window != (None, None):
                inside = in_window(good, *self.window)
                self.counts.outside_window += int((~inside).sum())
                good = good[inside].reset_index(drop=True)
            if self.watermark is not None:
                fresh = (good["updated_at"].isna() | (good["updated_at"] >= self.watermark)).astype(bool)
                self.counts.outside_window += int((~fresh).sum())
                good = good[fresh].reset_index(drop=True)
            ready, vendor_rejects = self.connector.prepare(good)
            rejects = pd.concat([rejects, vendor_rejects], ignore_index=True) if len(vendor_rejects) else rejects
            if self.limit is not None:
                ready = ready.iloc[: max(0, self.limit - self.counts.ready)]
            self.counts.rejected += len(rejects)
            self.counts.ready += len(ready)
            yield ready, rejects

    def batches(self) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        """(batch of ``job.batch_size`` rows or fewer, rejects found since the previous batch).

        One concat per source chunk (the carried remainder plus the chunk), then slices. For a
        grouping vendor, a batch holds whole groups (one group larger than the batch size is a
        batch of its own): a group is never split across batches or tasks."""
        rule = self.connector.spec.unit
        if rule.kind == "group" and rule.column:
            yield from self._grouped_batches(rule.column)
            return
        # one request per row: stagger the first batches' ends (see ``batch_sizes``); a chunking
        # vendor's batch is a few bulk requests, which a smaller batch would only multiply
        sizes = batch_sizes(self.batch_size, self.job.concurrency if rule.kind == "row" else 1)
        size = next(sizes)
        carry: pd.DataFrame | None = None
        rejects: list[pd.DataFrame] = []
        for ready, chunk_rejects in self.prepared():
            if len(chunk_rejects):
                rejects.append(chunk_rejects)
            frame = ready if carry is None or carry.empty else pd.concat([carry, ready], ignore_index=True)
            start = 0
            while len(frame) - start >= size:
                yield frame.iloc[start:start + size].reset_index(drop=True), _concat(rejects)
                rejects = []
                start += size
                size = next(sizes)
            carry = frame.iloc[start:]
        if (carry is not None and len(carry)) or rejects:
            rest = carry if carry is not None else pd.DataFrame()
            yield rest.reset_index(drop=True), _concat(rejects)

    def _grouped_batches(self, column: str) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        size = self.batch_size
        with tempfile.TemporaryDirectory(prefix="assetferry-groups-") as tmp:
            spill = [Path(tmp) / f"bucket-{k:02d}.pkl" for k in range(GROUP_BUCKETS)]
            for ready, found in self.prepared():
                if len(found):
                    yield ready.iloc[0:0], found  # rejects are reported as they are found
                if not len(ready):
                    continue
                keys = ready[column].astype("string").fillna("")
                bucket = pd.util.hash_array(keys.to_numpy(dtype=object)) % GROUP_BUCKETS
                for k, part in ready.groupby(bucket, sort=False):
                    with spill[int(k)].open("ab") as f:
                        pickle.dump(part, f, protocol=pickle.HIGHEST_PROTOCOL)
            for path in spill:
                if not path.exists():
                    continue
                parts = []
                with path.open("rb") as f:
                    while True:
                        try:
                            parts.append(pickle.load(f))
                        except EOFError:
                            break
                path.unlink()
                frame = pd.concat(parts, ignore_index=True)
                order = frame[column].astype("string").fillna("")
                frame = frame.iloc[order.argsort(kind="stable")].reset_index(drop=True)
                keys = frame[column].astype("string").fillna("").to_numpy(dtype=object)
                start = 0
                n = len(frame)
                while start < n:
                    end = min(start + size, n)
                    # extend to the end of the last group, or cut before it if it started earlier
                    if end < n and keys[end] == keys[end - 1]:
                        group_start = end - 1
                        while group_start > start and keys[group_start - 1] == keys[end - 1]:
                            group_start -= 1
                        if group_start > start:
                            end = group_start
                        else:
                            while end < n and keys[end] == keys[end - 1]:
                                end += 1
                    yield frame.iloc[start:end].reset_index(drop=True), _concat([])
                    start = end

    @property
    def batch_size(self) -> int:
        """The job's ``batch_size``, else the vendor's default (``VendorSpec.batch_size``)."""
        return self.job.batch_size or self.connector.spec.batch_size

    def count_rows(self) -> int:
        """Rows in the source (one extra streaming pass), for progress totals; rows that cannot
        be parsed count too (each becomes a reject)."""
        return sum(c.rows_read for c in manifest_source(self.job).chunks(self.chunk_rows))

    @property
    def warnings(self) -> list[str]:
        """What the summary should say although nothing failed: manifests without a single row."""
        return [f"manifest {source} has no rows" for source in self.source.empty_files]

    def ledger(self) -> Ledger:
        return Ledger(state_url(self.job, self.connector), state_options(self.job))

    def rejects_writer(self, name: str = "rejects.csv") -> RejectsWriter:
        return RejectsWriter(f"{state_url(self.job, self.connector)}/{name}", REJECT_COLUMNS,
                             state_options(self.job))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(REJECT_COLUMNS))
    return pd.concat(frames, ignore_index=True)
