"""ManifestSource: stream asset rows from CSV, JSON, JSONL or Parquet manifests on any fsspec filesystem."""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.core import has_magic, url_to_fs
from fsspec.utils import infer_compression

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.sources.base import RecordChunk

FORMATS = ("csv", "json", "jsonl", "parquet")
EXTENSIONS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# ValueError covers pandas' ParserError, JSONDecodeError, UnicodeDecodeError and ArrowInvalid.
_PARSE_ERRORS = (ValueError, EOFError, zlib.error, gzip.BadGzipFile)
_HTTP = frozenset({"http", "https"})


def display_url(url: str) -> str:
    """``url`` made safe for logs and messages: its password and any http(s) query are masked."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    if query and parts.scheme.lower() in _HTTP:
        query = "***"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class ManifestSource:
    """Rows of one manifest, or of every file matching a glob, read in fixed-size chunks.

    ``url`` is a local path or any fsspec URL and may be a glob (``s3://b/manifests/*.csv``);
    matches are read in sorted order. ``format`` (csv, json, jsonl, parquet) applies to every
    file; by default each file's extension decides, after any compression suffix (``.csv.gz``)
    which is decompressed transparently. ``options`` are fsspec storage options; their values
    never appear in messages or :meth:`describe`. ``columns`` renames source columns to
    canonical names in every chunk.

    Memory stays flat as the manifest grows for CSV, JSONL and Parquet (one chunk plus read
    buffers). JSON, a single document, is parsed whole: use JSONL for large manifests.

    Every problem with the manifest itself raises ``ConfigError``: nothing matches, the file is
    missing or not parsable, the format is unknown, renaming produces duplicate columns. A
    parse error can surface after earlier chunks have been yielded. A file with a header and no
    rows (or no bytes at all) yields nothing.
    """

    def __init__(
        self,
        url: str,
        format: str | None = None,
        options: dict[str, Any] | None = None,
        columns: dict[str, str] | None = None,
    ) -> None:
        if not url or not url.strip():
            raise ConfigError("manifest url is empty")
        self.url = url
        self.format = _check_format(format) if format is not None else None
        self._options = dict(options or {})
        self._columns = dict(columns or {})

    def __repr__(self) -> str:
        return f"ManifestSource({self.describe()})"

    def describe(self) -> str:
        """One log line: masked URL, format, renames and storage option names (never values)."""
        parts = [f"format {self.format or 'from extension'}"]
        if self._columns:
            parts.append("columns " + ", ".join(f"{k}->{v}" for k, v in self._columns.items()))
        if self._options:
            parts.append("storage options " + ", ".join(sorted(self._options)))
        return f"manifest {display_url(self.url)} ({'; '.join(parts)})"

    def files(self) -> list[str]:
        """The files ``chunks`` would read, named as in ``RecordChunk.source``.

        Raises ``ConfigError`` when nothing matches or the manifest is missing.
        """
        return [source for _, source in self._resolve()[1]]

    def chunks(self, chunk_rows: int = 10_000) -> Iterator[RecordChunk]:
        """Yield chunks of at most ``chunk_rows`` rows, file by file, holding one chunk at a time.

        ``first_row`` counts data rows from 1 in each file (CSV header and JSONL blank lines
        not counted). Raises ``ConfigError`` as described on the class.
        """
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
        fs, files = self._resolve()
        for path, source in files:
            yield from self._read_file(fs, path, source, chunk_rows)

    def _resolve(self) -> tuple[AbstractFileSystem, list[tuple[str, str]]]:
        """The filesystem and the (path, source) pairs to read, in order."""
        shown = display_url(self.url)
        try:
            fs, path = url_to_fs(self.url, **self._options)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot open manifest {shown}: {exc}") from exc
        except TypeError as exc:
            names = ", ".join(sorted(self._options)) or "none"
            raise ConfigError(
                f"invalid storage options for manifest {shown} (given: {names})"
            ) from exc
        # fsspec shares filesystem instances (and their listing caches) across a process: a
        # long-lived worker would otherwise see last run's manifest.
        fs.invalidate_cache()
        try:
            if has_magic(path) and not _is_http(fs):
                found = fs.glob(path, detail=True)
                matches = sorted(p for p, info in found.items() if info.get("type") != "directory")
                if not matches:
                    raise ConfigError(f"no manifest matches {shown}")
                keep_protocol = "://" in self.url
                return fs, [(p, fs.unstrip_protocol(p) if keep_protocol else p) for p in matches]
            try:
                info = fs.info(path)
            except FileNotFoundError as exc:
                raise ConfigError(f"manifest not found: {shown}") from exc
        except PermissionError as exc:
            raise ConfigError(f"access denied to manifest {shown}") from exc
        if info.get("type") == "directory":
            raise ConfigError(
                f"manifest {shown} is a directory; use a glob such as {shown.rstrip('/')}/*.csv"
            )
        return fs, [(path, shown)]

    def _read_file(
        self, fs: AbstractFileSystem, path: str, source: str, chunk_rows: int
    ) -> Iterator[RecordChunk]:
        fmt, compression = self._format_of(path, source)
        try:
            handle = fs.open(path, "rb", compression=compression)
        except FileNotFoundError as exc:
            raise ConfigError(f"manifest not found: {source}") from exc
        except PermissionError as exc:
            raise ConfigError(f"access denied to manifest {source}") from exc
        with handle:
            frames = _READERS[fmt](handle, chunk_rows)
            row = 1
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                except _PARSE_ERRORS as exc:
                    raise ConfigError(f"cannot parse {fmt} manifest {source}: {exc}") from exc
                if len(frame) == 0:
                    continue
                frame = self._rename(frame, source).reset_index(drop=True)
                yield RecordChunk(frame=frame, source=source, first_row=row)
                row += len(frame)

    def _format_of(self, path: str, source: str) -> tuple[str, str | None]:
        """(format, fsspec compression) for one file, from ``format`` or the file's extension."""
        name = urlsplit(path).path if "://" in path else path
        name = posixpath.basename(name).lower()
        compression = infer_compression(name)
        if compression is not None:
            name = posixpath.splitext(name)[0]
        if self.format is not None:
            return self.format, compression
        fmt = EXTENSIONS.get(posixpath.splitext(name)[1])
        if fmt is None:
            raise ConfigError(
                f"cannot tell the format of manifest {source} from its extension; "
                f"set format to one of: {', '.join(FORMATS)}"
            )
        return fmt, compression

    def _rename(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        if self._columns:
            frame = frame.rename(columns=self._columns)
        duplicated = frame.columns[frame.columns.duplicated()]
        if len(duplicated):
            raise ConfigError(
                f"manifest {source} has duplicate column(s) after renaming: "
                f"{', '.join(map(str, duplicated.unique()))}"
            )
        return frame


def _check_format(format: str) -> str:
    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown manifest format {format!r}; accepted: {', '.join(FORMATS)}")
    return fmt


def _is_http(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return bool(_HTTP.intersection(protocols))


def _csv_frames(handle: IO[bytes], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """All values as strings; an empty cell is ``""``; a zero-byte file yields nothing."""
    try:
        reader = pd.read_csv(handle, chunksize=chunk_rows, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return
    with reader:
        yield from reader


def _jsonl_frames(handle: IO[bytes], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """One object per line, blank lines skipped; values keep their JSON types (object columns).

    Parsed with the standard ``json`` module rather than ``pd.read_json`` so that large
    integer ids keep every digit and an error names its line.
    """
    text = io.TextIOWrapper(handle, encoding="utf-8-sig")
    line_no = 0
    while lines := list(islice(text, chunk_rows)):
        first_line, line_no = line_no + 1, line_no + len(lines)
        body = list(filter(str.strip, lines))
        if not body:
            continue
        try:
            records = json.loads("[" + ",".join(body) + "]")
        except ValueError:
            records = None
        if records is None or len(records) != len(body) or not _all_objects(records):
            raise ValueError(_jsonl_problem(lines, first_line))
        yield pd.DataFrame(records, dtype=object)


def _all_objects(records: list[Any]) -> bool:
    return set(map(type, records)) <= {dict}


def _jsonl_problem(lines: list[str], first_line: int) -> str:
    """Find the first bad line of a chunk that failed to parse (cold path: one line at a time)."""
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            return f"line {number}: {exc}"
        if not isinstance(value, dict):
            return f"line {number}: expected a JSON object, got {type(value).__name__}"
    return f"lines {first_line}-{first_line + len(lines) - 1}: invalid JSON lines"


def _json_frames(handle: IO[bytes], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A top-level array of objects, or an object with exactly one array member ({"assets": [...]}).

    The whole document is parsed in memory (JSON cannot be streamed); then sliced into chunks.
    """
    text = io.TextIOWrapper(handle, encoding="utf-8-sig").read()
    if not text.strip():
        return
    data = json.loads(text)
    del text
    if isinstance(data, dict):
        arrays = [value for value in data.values() if isinstance(value, list)]
        if len(arrays) != 1:
            raise ValueError(
                "expected a top-level array of objects or an object with exactly one array "
                f"member such as {{\"assets\": [...]}}; found {len(arrays)} array members"
            )
        data = arrays[0]
    if not isinstance(data, list):
        raise ValueError(f"expected a top-level array of objects, got {type(data).__name__}")
    if not _all_objects(data):
        index = next(i for i, item in enumerate(data) if not isinstance(item, dict))
        raise ValueError(f"array item {index} is {type(data[index]).__name__}, not an object")
    for start in range(0, len(data), chunk_rows):
        yield pd.DataFrame(data[start : start + chunk_rows], dtype=object)


def _parquet_frames(handle: IO[bytes], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Record batches of ``chunk_rows`` rows; pyarrow reads only the row groups it needs."""
    parquet = pq.ParquetFile(handle)
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


_READERS: dict[str, Callable[[IO[bytes], int], Iterator[pd.DataFrame]]] = {
    "csv": _csv_frames,
    "json": _json_frames,
    "jsonl": _jsonl_frames,
    "parquet": _parquet_frames,
}
