"""The canonical asset record: schema, ``canonicalize()`` for raw chunks, duplicate tracking and rejects."""

from __future__ import annotations

import mimetypes
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from assetferry.connectors.core.errors import ConfigError

if TYPE_CHECKING:
    from assetferry.connectors.sources.base import RecordChunk

CANONICAL_COLUMNS = (
    "id",
    "title",
    "description",
    "file",
    "file_name",
    "content_type",
    "tags",
    "category",
    "language",
    "parent",
    "updated_at",
)
REQUIRED = ("id", "file")
REJECT_COLUMNS = ("source", "row", "id", "field", "reason", "record")
META_COLUMNS = ("_source", "_row")
STRING_COLUMNS = tuple(c for c in CANONICAL_COLUMNS if c not in ("tags", "updated_at"))
TAG_SEPARATOR = "|"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
TIMESTAMP_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")
STRING_DTYPE = pd.StringDtype()  # missing values are pd.NA

_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
_URL = r"^[A-Za-z][A-Za-z0-9+.-]*://"
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}
_ROW_BITS = 40  # DuplicateTracker packs (source index, row) into one int: rows < 2**40


class DuplicateTracker:
    """The ids accepted so far in one run, with where each was first seen.

    Memory grows with the number of distinct ids only, and little: 24 bytes per id (two 64-bit
    hashes of the id and one int packing (source index, row)) in sorted numpy runs, instead of
    the id strings themselves (about 130 bytes per id in a dict), so a 1M-row manifest costs
    24 MB. Two ids are taken for one when both independent 64-bit hashes agree (a 128-bit
    collision: never, in practice); ids repeated within one call are compared exactly. Create one
    tracker per run and pass it to every ``canonicalize`` call of that run.
    """

    _KEYS = ("assetferry-dup-1", "assetferry-dup-2")  # siphash keys, 16 bytes each

    def __init__(self) -> None:
        # runs of (h1 sorted, h2, packed); merged like a binary counter, so there are few
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self._runs)

    def __contains__(self, id: object) -> bool:
        return bool(self._find(*self._hash(np.array([str(id)], dtype=object)))[0] >= 0)

    def check(self, ids: pd.Series, source: str, rows: pd.Series) -> pd.Series:
        """Flag ids seen before and remember the others at (``source``, their row).

        Returns a bool Series on ``ids``' index: True where the id was recorded by an earlier
        call or occurs earlier in ``ids`` itself (the first occurrence is kept and recorded).
        ``ids`` must be non-missing strings; ``rows`` holds 1-based row numbers aligned with
        ``ids``. Vectorised; cost O(len(ids) log n) plus an amortised merge.
        """
        keys = ids.to_numpy(dtype=object)
        h1, h2 = self._hash(keys)
        before = self._find(h1, h2) >= 0
        duplicate = before | ids.duplicated(keep="first").to_numpy()
        new = ~duplicate
        if new.any():
            origin = np.int64(self._index_of(source)) << _ROW_BITS
            packed = origin | rows.to_numpy(dtype=np.int64)[new]
            order = np.argsort(h1[new], kind="stable")
            self._runs.append((h1[new][order], h2[new][order], packed[order]))
            while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
                b, a = self._runs.pop(), self._runs.pop()
                merged = [np.concatenate([x, y]) for x, y in zip(a, b)]
                order = np.argsort(merged[0], kind="stable")  # two sorted runs: a linear merge
                self._runs.append((merged[0][order], merged[1][order], merged[2][order]))
        return pd.Series(duplicate, index=ids.index)

    def first_seen(self, ids: pd.Series) -> pd.DataFrame:
        """Where each of ``ids`` was first seen: columns ``source`` and ``row``, on ``ids``' index.

        Raises ``KeyError`` for an id the tracker has not recorded.
        """
        keys = ids.to_numpy(dtype=object)
        packed = self._find(*self._hash(keys))
        if (packed < 0).any():
            raise KeyError(str(keys[np.flatnonzero(packed < 0)[0]]))
        sources = np.asarray(self._sources, dtype=object)[packed >> _ROW_BITS]
        return pd.DataFrame(
            {
                "source": pd.Series(sources, index=ids.index, dtype=STRING_DTYPE),
                "row": pd.Series(packed & ((1 << _ROW_BITS) - 1), index=ids.index),
            }
        )

    def _hash(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(pd.util.hash_array(keys, hash_key=k, categorize=False) for k in self._KEYS)  # type: ignore[return-value]

    def _find(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """The packed (source, row) of each hashed id, -1 where not recorded."""
        found = np.full(len(h1), -1, dtype=np.int64)
        for run_h1, run_h2, run_packed in self._runs:
            at = np.searchsorted(run_h1, h1)
            inside = at < len(run_h1)
            hit = np.zeros(len(h1), dtype=bool)
            hit[inside] = run_h1[at[inside]] == h1[inside]
            for i in np.flatnonzero(hit):  # usually one candidate; a 64-bit h1 tie scans its run
                j = at[i]
                while j < len(run_h1) and run_h1[j] == h1[i]:
                    if run_h2[j] == h2[i] and found[i] < 0:
                        found[i] = run_packed[j]
                        break
                    j += 1
        return found

    def _index_of(self, source: str) -> int:
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        return index


def canonicalize(
    chunk: RecordChunk, tracker: DuplicateTracker, required: tuple[str, ...] = REQUIRED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a raw chunk into canonical records and rejects.

    ``good`` has every canonical column (in ``CANONICAL_COLUMNS`` order; missing ones all NA),
    then the chunk's other columns unchanged, then ``_source`` and ``_row`` (1-based row in
    the source file); index reset. String columns are stripped with ``""`` turned into
    ``pd.NA``; ``file_name`` defaults to the basename of ``file`` (URL query and fragment
    dropped); ``content_type`` defaults to a guess from ``file_name``; ``tags`` is a list per
    row; ``updated_at`` is datetime64[us, UTC] (ISO-8601 text, naive meaning UTC).

    ``rejects`` (``REJECT_COLUMNS``, row order) holds each invalid row once, with its first
    problem: missing id, id with leading or trailing whitespace (ids are never trimmed), id with
    control characters, a missing ``required`` value (by default
    ``file``; a vendor's spec names its own), invalid updated_at,
    duplicate id. Duplicates are judged among the valid rows only, across every chunk given
    the same ``tracker``; the first occurrence is kept. Raises ``ConfigError`` if the chunk
    has duplicate column names. All work is vectorised over the chunk.
    """
    raw = chunk.frame
    if raw.columns.duplicated().any():
        names = ", ".join(map(str, raw.columns[raw.columns.duplicated()].unique()))
        raise ConfigError(f"{chunk.source} has duplicate column(s): {names}")
    n = len(raw)
    index = pd.RangeIndex(n)
    raw = raw.set_axis(index, axis=0)
    rows = pd.Series(chunk.row_numbers(), index=index)

    text = {
        column: _as_text(raw[column]) if column in raw.columns else _missing_text(index)
        for column in STRING_COLUMNS
    }
    text["file_name"] = text["file_name"].fillna(_file_names(text["file"]))
    text["content_type"] = text["content_type"].fillna(_guess_content_types(text["file_name"]))
    updated_at, stamp_text = _timestamps(raw.get("updated_at"), index)

    ids = text["id"]
    field = pd.Series(pd.NA, index=index, dtype=object)
    reason = pd.Series(pd.NA, index=index, dtype=object)

    def flag(problem: pd.Series, name: str, why: str | pd.Series) -> None:
        """Record ``why`` for the rows with ``problem`` that have no earlier problem."""
        hit = problem & field.isna()
        field.loc[hit] = name
        reason.loc[hit] = why if isinstance(why, str) else why.reindex(index)[hit]

    flag(ids.isna(), "id", "missing id")
    if "id" in raw.columns:  # ids are kept exactly: one with surrounding whitespace is refused, not trimmed
        exact = raw["id"].astype(STRING_DTYPE)
        padded = (exact.str.len() != exact.str.strip().str.len()).fillna(False).astype(bool) & ids.notna()
        flag(padded, "id", "id has leading or trailing whitespace: '" + exact[padded] + "'")
    control = ids.str.contains(_CONTROL, regex=True).fillna(False).astype(bool)
    flag(control, "id", "id contains control characters")
    for column in required:  # the vendor's required columns (``file`` only for vendors with files)
        if column != "id" and column in text:
            flag(text[column].isna(), column, f"missing {column}")
    bad_stamp = stamp_text.notna() & updated_at.isna()
    flag(bad_stamp, "updated_at", "invalid timestamp '" + stamp_text[bad_stamp] + "'")

    valid = field.isna()
    if valid.any():
        repeated = tracker.check(ids[valid], chunk.source, rows[valid])
        repeated = repeated.index[repeated.to_numpy()]
        if len(repeated):
            where = tracker.first_seen(ids[repeated])
            flag(
                pd.Series(index.isin(repeated), index=index),
                "id",
                "duplicate id '" + ids[repeated] + "' (first seen at " + where["source"]
                + " row " + where["row"].astype(str) + ")",
            )

    canonical = pd.DataFrame(
        {**text, "tags": _tags(raw.get("tags"), index), "updated_at": updated_at},
        index=index,
    )[list(CANONICAL_COLUMNS)]
    extra = [c for c in raw.columns if c not in CANONICAL_COLUMNS and c not in META_COLUMNS]
    meta = pd.DataFrame(
        {"_source": pd.Series(chunk.source, index=index, dtype=STRING_DTYPE), "_row": rows}
    )
    keep = field.isna()
    good = pd.concat([canonical, raw[extra], meta], axis=1)[keep].reset_index(drop=True)

    bad = ~keep
    rejected = pd.concat([raw[[c for c in raw.columns if c not in META_COLUMNS]], meta], axis=1)[bad]
    rejects = rejects_frame(rejected, field=field[bad], reason=reason[bad])
    return good, rejects


def check_columns(chunk: RecordChunk, required: tuple[str, ...] = REQUIRED) -> None:
    """Raise ``ConfigError`` once when the chunk's columns lack ``id`` or a ``required`` column:
    ``column absent: id (columns found: ...)`` (a wrong delimiter shows as one long column name)."""
    found = [str(c) for c in chunk.frame.columns]
    missing = [c for c in dict.fromkeys(("id", *required)) if c not in found]
    if missing:
        shown = ", ".join(found)
        shown = shown if len(shown) <= 300 else shown[:300] + "..."
        hint = " (the delimiter is source.delimiter; default ',')" if len(found) == 1 else ""
        raise ConfigError(f"manifest {chunk.source}: column absent: {', '.join(missing)} "
                          f"(columns found: {shown}){hint}")


def rejects_frame(
    frame: pd.DataFrame,
    *,
    field: str | pd.Series,
    reason: str | pd.Series,
    source: str | pd.Series | None = None,
    row: int | pd.Series | None = None,
) -> pd.DataFrame:
    """One rejects row (``REJECT_COLUMNS``) per row of ``frame``, in ``frame``'s order, index reset.

    ``frame`` is a raw or canonical frame; ``source`` and ``row`` default to its ``_source``
    and ``_row`` columns (as on frames from ``canonicalize``). ``field``, ``reason``,
    ``source`` and ``row`` are scalars or Series on ``frame``'s index. ``id`` is the stripped
    id (NA when missing). ``record`` is the row as a compact JSON object of all its columns
    except ``_source``/``_row``: strings stay strings, lists (``tags``) become JSON lists,
    timestamps ISO-8601 text, missing values null, non-ASCII kept as is. Raises ``ValueError``
    if ``source``/``row`` are neither given nor columns, or a Series is not on ``frame``'s index.
    """
    index = frame.index
    if source is None:
        source = _column(frame, "_source")
    if row is None:
        row = _column(frame, "_row")
    # ``_``-prefixed columns are our own working columns (``_source``, ``_row``, a vendor's
    # derived values), not the user's record.
    payload = frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")])
    ids = _as_text(frame["id"]) if "id" in frame.columns else _missing_text(index)
    rejects = pd.DataFrame(
        {
            "source": _spread(source, index, STRING_DTYPE, "source"),
            "row": _spread(row, index, np.int64, "row"),
            "id": ids,
            "field": _spread(field, index, STRING_DTYPE, "field"),
            "reason": _spread(reason, index, STRING_DTYPE, "reason"),
            "record": pd.Series(_json_records(payload), index=index, dtype=STRING_DTYPE),
        },
        index=index,
    )
    return rejects.reset_index(drop=True)


def parse_window(
    since: str | None, until: str | None
) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """ISO-8601 ``since``/``until`` options as UTC Timestamps (naive means UTC; None or "" → None).

    Raises ``ConfigError`` naming the option for a value that is not ISO-8601, or when
    ``since`` is not before ``until``.
    """
    start = _parse_bound("since", since)
    end = _parse_bound("until", until)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"since ({since}) must be before until ({until})")
    return start, end


def in_window(frame: pd.DataFrame, since: pd.Timestamp | None, until: pd.Timestamp | None) -> pd.Series:
    """True where ``updated_at`` is in [since, until); with either bound set, rows without
    ``updated_at`` are outside. With no bound every row is inside. Bool Series on ``frame``'s index."""
    if since is None and until is None:
        return pd.Series(True, index=frame.index, dtype=bool)
    stamps = frame["updated_at"]
    inside = stamps.notna()
    if since is not None:
        inside &= stamps >= since
    if until is not None:
        inside &= stamps < until
    return inside.astype(bool)


def _as_text(values: pd.Series) -> pd.Series:
    """Values as stripped strings (``STRING_DTYPE``), ``""`` → NA; integral floats drop ``.0``."""
    if pd.api.types.is_float_dtype(values.dtype):
        finite = values.dropna()
        if ((finite % 1) == 0).all() and (finite.abs() < 2**53).all():
            values = values.astype("Int64")
    text = values.astype(STRING_DTYPE).str.strip()
    return text.mask(text.eq("").fillna(False).astype(bool))


def _missing_text(index: pd.Index) -> pd.Series:
    return pd.Series(pd.NA, index=index, dtype=STRING_DTYPE)


def _file_names(files: pd.Series) -> pd.Series:
    """Basename of each path or URL; a URL's query string and fragment are dropped first."""
    is_url = files.str.contains(_URL, regex=True).fillna(False).astype(bool)
    paths = files.mask(is_url, files.str.replace(r"[?#].*$", "", regex=True))
    names = paths.str.replace(r"^.*[/\\]", "", regex=True)
    return names.mask(names.eq("").fillna(False).astype(bool))


def _guess_content_types(names: pd.Series) -> pd.Series:
    """``mimetypes`` guess per unique extension; compressed files get the compression's type."""
    found = pc.extract_regex(_arrow_text(names), r"(?P<ext>\.[^./\\]+)$").field("ext")
    lowered = pc.utf8_lower(found).to_numpy(zero_copy_only=False)
    extensions = pd.Series(lowered, index=names.index, dtype=object)
    table = {ext: _content_type_for(ext) for ext in extensions.dropna().unique()}
    return extensions.map(table).astype(STRING_DTYPE).fillna(DEFAULT_CONTENT_TYPE)


def _content_type_for(extension: str) -> str:
    kind, encoding = mimetypes.guess_type("f" + extension)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, DEFAULT_CONTENT_TYPE)
    return kind or DEFAULT_CONTENT_TYPE


def _tags(values: pd.Series | None, index: pd.RangeIndex) -> pd.Series:
    """A list of tags per row from ``|``-separated text and/or lists (items trimmed, empty dropped).

    ``|`` separates tags everywhere, also inside list items. Rows without tags get ``[]``.
    Text columns are split in Arrow; other columns are exploded first (lists, arrays, scalars).
    """
    n = len(index)
    if values is None:
        positions, text = np.empty(0, dtype=np.int64), pa.array([], type=pa.large_string())
    elif pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        positions, text = np.arange(n, dtype=np.int64), _arrow_text(values)
    else:
        items = pd.Series(values.to_numpy(dtype=object), index=pd.RangeIndex(n)).explode()
        items = items[items.notna()]
        positions, text = items.index.to_numpy(dtype=np.int64), _arrow_text(items)
    parts = pc.split_pattern(text, TAG_SEPARATOR)
    owner = positions[pc.list_parent_indices(parts).to_numpy()]
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    keep = pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False)
    flat, owner = flat.filter(keep), owner[keep.to_numpy(zero_copy_only=False)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), flat.cast(pa.large_string())).to_pylist()
    return pd.Series(np.fromiter(lists, dtype=object, count=n), index=index)


def _arrow_text(values: pd.Series) -> pa.Array:
    """``values`` as an Arrow string array (zero-copy for Arrow-backed strings)."""
    array = pa.array(values.astype(STRING_DTYPE).array)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _timestamps(values: pd.Series | None, index: pd.RangeIndex) -> tuple[pd.Series, pd.Series]:
    """(parsed UTC timestamps, the text they came from); unparsable text parses to NaT."""
    if values is None:
        return pd.Series(pd.NaT, index=index, dtype=TIMESTAMP_DTYPE), _missing_text(index)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        return stamps.astype(TIMESTAMP_DTYPE), _missing_text(index)
    text = _as_text(values)
    stamps = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    return stamps.astype(TIMESTAMP_DTYPE), text


def _parse_bound(option: str, value: Any) -> pd.Timestamp | None:
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        stamp = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid {option} {text!r}: expected an ISO-8601 timestamp such as "
            "2024-01-31 or 2024-01-31T12:00:00Z"
        ) from exc
    if pd.isna(stamp):
        raise ConfigError(f"invalid {option} {text!r}: expected an ISO-8601 timestamp")
    return stamp


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        raise ValueError(f"frame has no {name!r} column; pass it as an argument")
    return frame[name]


def _spread(value: Any, index: pd.Index, dtype: Any, name: str) -> pd.Series:
    """A scalar broadcast over ``index``, or a Series checked to be on ``index``."""
    if isinstance(value, pd.Series):
        if not value.index.equals(index):
            raise ValueError(f"{name} must be a scalar or a Series on the frame's index")
        return value.astype(dtype)
    return pd.Series(value, index=index, dtype=dtype)


def _json_records(frame: pd.DataFrame) -> list[str]:
    """Each row as a compact JSON object (vectorised through ``DataFrame.to_json``)."""
    if len(frame) == 0:
        return []
    if frame.shape[1] == 0:
        return ["{}"] * len(frame)
    text = frame.to_json(
        orient="records",
        lines=True,
        force_ascii=False,
        double_precision=15,
        date_format="iso",
        date_unit="us",
        default_handler=str,
    )
    # ujson escapes every "/" as "\/"; any "\" right before "/" is that escape, so this is exact.
    return text.replace("\\/", "/").rstrip("\n").split("\n")


class RowProblems:
    """The first problem of each row of a frame, for a vendor's vectorised ``prepare`` checks.

    ``flag(problem, field, why)`` records ``field`` and ``why`` (a string or a Series on the
    frame's index) for the rows where ``problem`` is True and no earlier problem was flagged;
    ``bad`` is the mask of flagged rows; ``split(frame)`` returns (good rows with a fresh index,
    rejects in ``REJECT_COLUMNS``).
    """

    def __init__(self, index: pd.Index) -> None:
        self.field = pd.Series(pd.NA, index=index, dtype=object)
        self.reason = pd.Series(pd.NA, index=index, dtype=object)

    def flag(self, problem: pd.Series, field: str, why: str | pd.Series) -> None:
        hit = problem.fillna(False).astype(bool) & self.field.isna()
        if not hit.any():
            return
        self.field[hit] = field
        self.reason[hit] = why if isinstance(why, str) else why[hit]

    @property
    def bad(self) -> pd.Series:
        return self.field.notna()

    def split(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        bad = self.bad
        rejects = (rejects_frame(frame[bad], field=self.field[bad], reason=self.reason[bad]) if bad.any()
                   else rejects_frame(frame.iloc[0:0], field="", reason=""))
        return frame[~bad].reset_index(drop=True), rejects
