"""ManifestSource: stream asset rows from CSV, JSON, JSONL or Parquet manifests on any fsspec filesystem."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import posixpath
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.files import unreachable
from assetferry.connectors.sources.base import RecordChunk
from fsspec import AbstractFileSystem
from fsspec.core import has_magic, url_to_fs
from fsspec.utils import infer_compression

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

    One bad row never refuses the manifest: a CSV line with too many or too few fields, bad
    quoting or an undecodable byte, or a JSONL line that is not a JSON object, is given to the
    caller in ``RecordChunk.rejects`` (file, row, a reason naming the line) and the rest goes on;
    ``on_bad_lines="fail"`` makes the first one a ``ConfigError`` instead. ``encoding`` (default
    UTF-8, a byte order mark dropped) and ``delimiter`` (CSV, default ``,``) say how to read the
    text; CRLF line ends are fine. Values are kept exactly as written (quoted values unquoted per
    RFC 4180, nothing trimmed).

    Every problem with the manifest itself raises ``ConfigError``: nothing matches, the file is
    missing or not parsable as a whole (a corrupt Parquet or gzip file, a JSON document with an
    error, a quote never closed), the format is unknown, the CSV header repeats a name, renaming
    produces duplicate columns. A parse error can surface after earlier chunks have been
    yielded. A file with a header and no rows (or no bytes at all) yields nothing and is listed
    in ``empty_files``.
    """

    def __init__(
        self,
        url: str,
        format: str | None = None,
        options: dict[str, Any] | None = None,
        columns: dict[str, str] | None = None,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
        on_bad_lines: str = "reject",
    ) -> None:
        if not url or not url.strip():
            raise ConfigError("manifest url is empty")
        self.url = url
        self.format = _check_format(format) if format is not None else None
        self._options = dict(options or {})
        self._columns = dict(columns or {})
        if on_bad_lines not in ("reject", "fail"):
            raise ConfigError(f"on_bad_lines must be reject or fail, got {on_bad_lines!r}")
        self.on_bad_lines = on_bad_lines
        ids = [k for k, v in self._columns.items() if v == "id"]
        self._read = _Options(encoding=_check_encoding(encoding), delimiter=_check_delimiter(delimiter),
                              id_column=ids[0] if ids else "id", label=encoding or "UTF-8")
        #: Files read so far that held no row at all (0 bytes, a header only, ``[]``): the
        #: pipeline reports them as warnings.
        self.empty_files: list[str] = []

    def __repr__(self) -> str:
        return f"ManifestSource({self.describe()})"

    def describe(self) -> str:
        """One log line: masked URL, format, renames and storage option names (never values)."""
        parts = [f"format {self.format or 'from extension'}"]
        if self._columns:
            parts.append("columns " + ", ".join(f"{k}->{v}" for k, v in self._columns.items()))
        if self._options:
            parts.append("storage options " + ", ".join(sorted(self._options)))
        if self._read.label != "UTF-8" or self._read.delimiter != ",":
            parts.append(f"encoding {self._read.label}, delimiter {self._read.delimiter!r}")
        if self.on_bad_lines != "reject":
            parts.append(f"bad lines {self.on_bad_lines}")
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
                raise _missing(shown, exc) from exc
        except PermissionError as exc:
            raise ConfigError(f"access denied to manifest {shown}") from exc
        except OSError as exc:  # e.g. aiohttp's connection errors, raised as they are
            if unreachable(exc) is None:
                raise
            raise _missing(shown, exc) from exc
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
            raise _missing(source, exc) from exc
        except PermissionError as exc:
            raise ConfigError(f"access denied to manifest {source}") from exc
        except OSError as exc:
            if unreachable(exc) is None:
                raise
            raise _missing(source, exc) from exc
        with handle:
            parts = _READERS[fmt](handle, chunk_rows, self._read)
            seen = 0
            while True:
                try:
                    frame, numbers, bad = next(parts)
                except StopIteration:
                    break
                except _PARSE_ERRORS as exc:
                    raise ConfigError(f"cannot parse {fmt} manifest {source}: {exc}") from exc
                if bad and self.on_bad_lines == "fail":
                    raise ConfigError(f"cannot parse {fmt} manifest {source}: {bad[0].reason} "
                                      "(source.on_bad_lines: reject keeps the other rows)")
                if len(frame) == 0 and not bad:
                    continue
                seen += len(frame) + len(bad)
                frame = self._rename(frame, source).reset_index(drop=True)
                first = int(numbers[0]) if len(numbers) else bad[0].row
                yield RecordChunk(frame=frame, source=source, first_row=min(first, bad[0].row) if bad else first,
                                  rows=numbers, rejects=_bad_frame(bad, source) if bad else None)
            if not seen:
                self.empty_files.append(source)

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


def _check_encoding(encoding: str | None) -> str:
    """A codec name; UTF-8 reads through ``utf-8-sig`` so that a byte order mark is dropped."""
    name = (encoding or "utf-8").strip()
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ConfigError(f"unknown source.encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return "utf-8-sig" if info.name == "utf-8" else info.name


def _check_delimiter(delimiter: str | None) -> str:
    sep = "," if delimiter is None else delimiter
    if len(sep) != 1 or sep in ('"', "\n", "\r"):
        raise ConfigError(f"source.delimiter must be one character other than a quote or a newline, got {delimiter!r}")
    return sep


def _bad_frame(bad: list[_Bad], source: str) -> pd.DataFrame:
    """Rows rejected while parsing, in ``REJECT_COLUMNS`` (``record``: the line number and text)."""
    from assetferry.connectors.core.records import REJECT_COLUMNS, STRING_DTYPE

    frame = pd.DataFrame({
        "source": pd.Series([source] * len(bad), dtype=STRING_DTYPE),
        "row": pd.Series([b.row for b in bad], dtype=np.int64),
        "id": pd.Series([b.id for b in bad], dtype=STRING_DTYPE),
        "field": pd.Series([b.field for b in bad], dtype=STRING_DTYPE),
        "reason": pd.Series([b.reason for b in bad], dtype=STRING_DTYPE),
        "record": pd.Series([json.dumps({"line": b.line, "text": b.text}, ensure_ascii=False) for b in bad],
                            dtype=STRING_DTYPE),
    })
    return frame[list(REJECT_COLUMNS)]


def _check_format(format: str) -> str:
    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown manifest format {format!r}; accepted: {', '.join(FORMATS)}")
    return fmt


def _missing(shown: str, exc: BaseException) -> ConfigError:
    """"manifest not found", or why its host could not be reached (fsspec's http filesystem
    reports a refused connection as a missing file)."""
    why = unreachable(exc.__cause__ if isinstance(exc, FileNotFoundError) else exc)
    if why:
        return ConfigError(f"cannot reach the host of manifest {shown} ({why})")
    return ConfigError(f"manifest not found: {shown}")


def _is_http(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return bool(_HTTP.intersection(protocols))


@dataclass(frozen=True)
class _Options:
    """How to read one manifest's text (see ``ManifestSource``)."""

    encoding: str = "utf-8-sig"  # the codec
    delimiter: str = ","
    label: str = "UTF-8"  # the encoding as the user named it
    id_column: str = "id"  # the source column that becomes ``id`` (for the id of a bad row)


@dataclass(frozen=True)
class _Bad:
    """One row that could not be parsed: its row and line numbers, the column at fault (if one)
    and why; ``text`` is the raw line(s), for the rejects file."""

    row: int
    line: int
    reason: str
    field: str | None = None
    id: str | None = None
    text: str = ""


#: One parsed piece of a file: good rows, their row numbers, and the rows that failed.
_Part = tuple[pd.DataFrame, np.ndarray, list[_Bad]]

_SURROGATE = re.compile("[\udc80-\udcff]")  # an undecodable byte, kept by ``surrogateescape``
_BLOCK = 1 << 20  # bytes read at a time
_MAX_RECORD = 16 << 20  # characters of one record (an unclosed quote swallows the rest)


def _has_undecodable(text: str) -> bool:
    """True when ``text`` holds a byte its encoding could not decode (a lone surrogate); an
    encode is one C pass, much faster than a regex search."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _undecodable(text: str, encoding: str) -> str:
    byte = ord(_SURROGATE.search(text).group()) - 0xDC00  # type: ignore[union-attr]
    return (f"not valid {encoding}: byte 0x{byte:02X} cannot be decoded (set source.encoding, "
            "e.g. latin-1 or cp1252)")


def _printable(text: str, limit: int = 1000) -> str:
    """Raw text made safe to store: undecodable bytes become U+FFFD; at most ``limit`` characters."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]


def _record_boundary(text: str) -> int:
    """The index just after the last newline outside quotes (0: none), for cutting a block of CSV
    text at a record boundary: a newline is outside quotes when the quotes before it are even."""
    pos = text.rfind("\n")
    if '"' not in text:
        return pos + 1
    while pos >= 0:
        if text.count('"', 0, pos) % 2 == 0:
            return pos + 1
        pos = text.rfind("\n", 0, pos)
    return 0


def _text_blocks(handle: IO[bytes], encoding: str, boundary: Any) -> Iterator[tuple[str, int]]:
    """(text, first line number) blocks of whole records, decoded with undecodable bytes kept as
    lone surrogates (``surrogateescape``) so one bad byte costs one row, not the file."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    carry, line, eof = "", 1, False
    while not eof:
        raw = handle.read(_BLOCK)
        eof = not raw
        text = carry + decoder.decode(raw, final=eof)
        cut = len(text) if eof else boundary(text)
        if cut <= 0:
            if len(text) > _MAX_RECORD:
                raise ValueError(f"line {line}: a quoted field is not closed within "
                                 f"{_MAX_RECORD >> 20} MB (a missing closing quote?)")
            carry = text
            continue
        block, carry = text[:cut], text[cut:]
        if block:
            yield block, line
        line += block.count("\n")


def _csv_parts(handle: IO[bytes], chunk_rows: int, opts: _Options) -> Iterator[_Part]:
    """All values as strings; an empty cell is ``""``; a zero-byte file yields nothing.

    The header is read exactly (a duplicated name is an error naming it). Each block of whole
    records is parsed by pandas' C parser when it is clean; a block with a ragged row, an
    undecodable byte or a stray quote is read again record by record with the ``csv`` module
    (strict quoting), so each bad record is rejected with its line and the others kept.
    """
    sep = opts.delimiter
    # a quote neither opening nor closing a field nor doubled (starts with the literal: fast scan)
    stray_quote = re.compile(f'"(?<=[^{re.escape(sep)}\\n"]")(?=[^{re.escape(sep)}\\r\\n"])')
    names: list[str] | None = None
    row = 1
    for block, line in _text_blocks(handle, opts.encoding, _record_boundary):
        if names is None:
            names, used = _csv_header(block, sep, opts.label, line)
            if names is None:
                continue  # only blank lines so far
            cut = 0
            for _ in range(used):
                cut = block.index("\n", cut) + 1 if "\n" in block[cut:] else len(block)
            block, line = block[cut:], line + used
        if not block.strip():
            continue
        frame = None
        if not _has_undecodable(block) and not ('"' in block and stray_quote.search(block)):
            try:
                frame = pd.read_csv(io.StringIO(block), header=None, dtype=str, keep_default_na=False,
                                    sep=sep, engine="c", skip_blank_lines=True)
            except (ValueError, pd.errors.ParserError):
                frame = None
            # pandas fills a short row's missing fields with "": a row can only be short (a long
            # one fails above), so the delimiters outside quotes must be exactly (columns - 1) per row
            if frame is not None and (frame.shape[1] != len(names) or frame.isna().to_numpy().any()
                                      or _delimiters(block, sep) != (len(names) - 1) * len(frame)):
                frame = None
        if frame is not None:
            frame.columns = names
            numbers = np.arange(row, row + len(frame), dtype=np.int64)
            row += len(frame)
            bad: list[_Bad] = []
        else:
            frame, numbers, bad, row = _csv_records(block, line, row, names, sep, opts)
        for start in range(0, max(len(frame), 1), chunk_rows):
            yield (frame.iloc[start:start + chunk_rows].reset_index(drop=True), numbers[start:start + chunk_rows],
                   bad if start == 0 else [])


def _delimiters(block: str, sep: str) -> int:
    """Delimiters outside quoted values (the block holds whole records: its quotes pair up)."""
    if '"' not in block:
        return block.count(sep)
    return "".join(block.split('"')[0::2]).count(sep)


def _csv_header(block: str, sep: str, label: str, line: int) -> tuple[list[str] | None, int]:
    """(column names, lines used) from the first non-blank record of ``block``."""
    reader = csv.reader(io.StringIO(block, newline=""), delimiter=sep, strict=True)
    for record in reader:
        if not record:
            continue
        if _SURROGATE.search("".join(record)):
            raise ValueError(f"line {line + reader.line_num - 1}: header {_undecodable(''.join(record), label)}")
        names = [name if name != "" else f"Unnamed: {i}" for i, name in enumerate(record)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"line {line + reader.line_num - 1}: duplicate column(s) in the header: "
                             + ", ".join(repeated))
        return names, reader.line_num
    return None, 0


def _csv_records(block: str, line: int, row: int, names: list[str], sep: str,
                 opts: _Options) -> tuple[pd.DataFrame, np.ndarray, list[_Bad], int]:
    """The slow path: one record at a time with the ``csv`` module; bad records become ``_Bad``."""
    lines = block.split("\n")
    reader = csv.reader(io.StringIO(block, newline=""), delimiter=sep, strict=True)
    id_at = names.index(opts.id_column) if opts.id_column in names else None
    good: list[list[str]] = []
    numbers: list[int] = []
    bad: list[_Bad] = []
    done = 0  # lines consumed so far
    while True:
        try:
            record = next(reader)
            problem = None
        except StopIteration:
            break
        except csv.Error as exc:
            record, problem = None, f"malformed quoting ({exc})"
        first, done = done, reader.line_num
        if record == []:
            continue  # a blank line is not a row
        where = line + first
        text = "\n".join(lines[first:done]).rstrip("\r")
        rid = record[id_at] if record is not None and id_at is not None and id_at < len(record) else None
        field = None
        if problem is None and record is not None:
            joined = sep.join(record)
            if _SURROGATE.search(joined):
                field = next(n for n, v in zip([*names, *[None] * len(record)], record) if _SURROGATE.search(v))
                problem = _undecodable(joined, opts.label)
            elif len(record) != len(names):
                problem = f"expected {len(names)} fields, found {len(record)}"
        if problem is not None:
            shown = None if rid is None or _SURROGATE.search(rid) else rid
            bad.append(_Bad(row, where, f"line {where}: {problem}", field, shown, _printable(text)))
        else:
            good.append(record)  # type: ignore[arg-type]
            numbers.append(row)
        row += 1
    frame = pd.DataFrame(good, columns=names, dtype=str) if good else pd.DataFrame(
        {n: pd.Series([], dtype=str) for n in names})
    return frame, np.asarray(numbers, dtype=np.int64), bad, row


def _jsonl_parts(handle: IO[bytes], chunk_rows: int, opts: _Options) -> Iterator[_Part]:
    """One object per line, blank lines skipped; values keep their JSON types (object columns).

    Parsed with the standard ``json`` module rather than ``pd.read_json`` so that large
    integer ids keep every digit and an error names its line. A line that is not a JSON
    object, or holds an undecodable byte, is a bad row; the others are kept.
    """
    text = io.TextIOWrapper(handle, encoding=opts.encoding, errors="surrogateescape", newline="")
    line_no = 0
    row = 1
    while lines := list(islice(text, chunk_rows)):
        first_line, line_no = line_no + 1, line_no + len(lines)
        body = [(n, ln) for n, ln in enumerate(lines, first_line) if ln.strip()]
        if not body:
            continue
        numbers = np.arange(row, row + len(body), dtype=np.int64)
        row += len(body)
        records = None
        joined = ",".join(ln for _, ln in body)
        if not _has_undecodable(joined):
            try:
                records = json.loads("[" + joined + "]")
            except ValueError:
                records = None
        if records is not None and len(records) == len(body) and _all_objects(records):
            yield pd.DataFrame(records, dtype=object), numbers, []
            continue
        good, keep, bad = [], [], []
        for (number, ln), r in zip(body, numbers.tolist()):
            problem, value = None, None
            if _SURROGATE.search(ln):
                problem = _undecodable(ln, opts.label)
            else:
                try:
                    value = json.loads(ln)
                except json.JSONDecodeError as exc:
                    problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
                else:
                    if not isinstance(value, dict):
                        problem = f"expected a JSON object, got {type(value).__name__}"
            if problem is None:
                good.append(value)
                keep.append(r)
            else:
                bad.append(_Bad(r, number, f"line {number}: {problem}", text=_printable(ln.rstrip("\r\n"))))
        frame = pd.DataFrame(good, dtype=object) if good else pd.DataFrame()
        yield frame, np.asarray(keep, dtype=np.int64), bad


def _all_objects(records: list[Any]) -> bool:
    return set(map(type, records)) <= {dict}


def _json_parts(handle: IO[bytes], chunk_rows: int, opts: _Options) -> Iterator[_Part]:
    """A top-level array of objects, or an object with exactly one array member ({"assets": [...]}).

    The whole document is parsed in memory (JSON cannot be streamed); then sliced into chunks.
    One bad value makes the whole document unreadable: an error names its line and column.
    """
    text = io.TextIOWrapper(handle, encoding=opts.encoding).read()
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
        part = data[start : start + chunk_rows]
        yield pd.DataFrame(part, dtype=object), np.arange(start + 1, start + 1 + len(part), dtype=np.int64), []


def _parquet_parts(handle: IO[bytes], chunk_rows: int, opts: _Options) -> Iterator[_Part]:
    """Record batches of ``chunk_rows`` rows; pyarrow reads only the row groups it needs."""
    parquet = pq.ParquetFile(handle)
    row = 1
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas(), np.arange(row, row + batch.num_rows, dtype=np.int64), []
        row += batch.num_rows


_READERS: dict[str, Callable[[IO[bytes], int, _Options], Iterator[_Part]]] = {
    "csv": _csv_parts,
    "json": _json_parts,
    "jsonl": _jsonl_parts,
    "parquet": _parquet_parts,
}
