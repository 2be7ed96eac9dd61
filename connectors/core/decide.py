"""Per-row decisions over a frame of prepared rows, vectorised: file stats (one per distinct file),
vendor checks, content hashes in bulk and skip-unchanged. The loader's ``rows`` and ``plan`` and
``validate`` all decide through :func:`decide`, so what a dry run shows is what a run does.

A connector may offer vectorised twins of its per-row hooks; each is optional and the per-row hook
is the fallback (a connector without them costs a ``dict`` per row, as before):

- ``content_frame(frame) -> DataFrame``: one column per key of ``content(row)``, each row holding
  that key's value, so that :func:`json_texts` renders exactly
  ``json.dumps(content(row), sort_keys=True, ensure_ascii=False, default=str)``. The content hash
  is defined by that text (see :func:`content_hash`); a twin must never change it.
- ``check_frame(frame, size) -> (field, reason)``: two Series on ``frame``'s index, NA where the
  row is fine; ``size`` is the stat'ed size per row (``Int64``, NA unknown).
- ``plan_actions(frame, priors, file_hash) -> Series``: the action ``plan`` would name for each row
  (one-row units only), for counting without building every request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from assetferry.connectors.core.files import FileInfo, display_url
from assetferry.connectors.core.ledger import INTENT, LedgerEntry

if TYPE_CHECKING:
    from assetferry.connectors.vendors.base import Connector

log = logging.getLogger("assetferry.decide")

SEND, REJECTED, UNCHANGED, LOADED = "send", "rejected", "unchanged", "loaded"
#: Below this many rows (a load batch) the per-row hooks are cheaper than the bulk path's fixed
#: cost, and the rows' dicts are built anyway for ``send``; both give the same text.
BULK_MIN_ROWS = 256
_STATS_CACHE_MAX = 100_000  # distinct files whose stat validate remembers
_JSON_CONTROL = r"[\x00-\x1f]"  # what json.dumps(ensure_ascii=False) escapes besides \ and "


def digest(text: str) -> str:
    """A short content hash (64 bits, hex): collisions between two versions of one record are
    negligible, and the ledger stays small. The ledger stores it: never change its definition."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def content_hash(content_json: str, file_hash: str) -> str:
    """The ledger's ``hash`` of a row: its content JSON (sorted keys, non-ASCII kept, ``default=str``)
    and its file's fingerprint digest (``""`` without a file). Stable across runs and versions."""
    return digest(content_json + "|" + file_hash)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class Decisions:
    """What the loader decided for each row of a frame (arrays in the frame's row order).

    ``status``: ``send``, ``rejected`` (``field``/``reason`` say why), ``unchanged`` or ``loaded``
    (the ledger holds this very hash; ``loaded`` when an earlier attempt of the same run did it).
    ``hash`` is set for every row that got as far as hashing (all ``send`` rows). ``records`` holds
    the rows as dicts where one was needed (per-row hooks), else None.
    """

    ids: list[str]
    status: np.ndarray
    field: np.ndarray
    reason: np.ndarray
    infos: np.ndarray  # FileInfo | None per row (shared between rows naming one file)
    file_hash: np.ndarray
    hash: np.ndarray
    priors: list[LedgerEntry | None]
    reconcile: np.ndarray
    records: list[dict[str, Any] | None]
    stats: int = 0  # distinct files stat'ed

    def fill_records(self, frame: pd.DataFrame, positions: np.ndarray) -> None:
        """Build ``records`` at ``positions`` (as ``DataFrame.to_dict("records")`` gives them)."""
        _records_for(frame, positions, self.records)


def _records_for(frame: pd.DataFrame, positions: np.ndarray, out: list[dict[str, Any] | None]) -> None:
    """Fill ``out`` at ``positions`` with the rows as dicts, in one ``to_dict`` call."""
    missing = [int(p) for p in positions if out[p] is None]
    if missing:
        for p, data in zip(missing, frame.iloc[missing].to_dict("records")):
            out[p] = data


def decide(connector: Connector, frame: pd.DataFrame, priors: dict[str, LedgerEntry] | Any,
           run_id: str | None = None, stats_cache: dict[str, FileInfo] | None = None) -> Decisions:
    """Decide every row of ``frame`` (prepared rows of one batch or chunk) without sending.

    In order, a row's first problem wins: its file cannot be stat'ed or is not allowed, the
    vendor's ``check`` refuses it, its ``content`` cannot be built ("cannot prepare this row");
    then a row whose hash equals its prior's (in a done status) is unchanged. Each distinct file
    is stat'ed once (concurrently for remote stores, see ``FileStore.stat_many``). Never raises for
    one row's problem. ``stats_cache`` (validate only: a snapshot) keeps each file's stat across
    calls; a load stats its batch's files afresh."""
    from assetferry.connectors.vendors.base import BaseConnector

    spec = connector.spec
    n = len(frame)
    ids = frame["id"].astype(str).tolist() if n else []
    status = np.full(n, SEND, dtype=object)
    field = np.full(n, None, dtype=object)
    reason = np.full(n, None, dtype=object)
    infos = np.full(n, None, dtype=object)
    file_hash = np.full(n, "", dtype=object)
    hashes = np.full(n, "", dtype=object)
    records: list[dict[str, Any] | None] = [None] * n
    stats = 0
    if spec.files and n:
        codes, uniques = pd.factorize(frame["file"].astype("string").fillna(""), use_na_sentinel=False)
        urls = list(uniques)
        if stats_cache is None:
            found = connector.files.stat_many(urls)
            stats = len(found)
        else:
            missing = [u for u in urls if u not in stats_cache]
            fresh = dict(zip(missing, connector.files.stat_many(missing))) if missing else {}
            found = [fresh[u] if u in fresh else stats_cache[u] for u in urls]
            if len(stats_cache) + len(fresh) > _STATS_CACHE_MAX:
                stats_cache.clear()
            stats_cache.update(fresh)
            stats = len(fresh)
        u_info = np.empty(len(found), dtype=object)
        u_info[:] = found
        u_error = np.array([bool(f.error) for f in found], dtype=bool)
        u_reason = np.array([f"{f.error}: {display_url(str(u))}" if f.error else None
                             for f, u in zip(found, uniques)], dtype=object)
        u_hash = np.array(["" if f.error else digest(f.fingerprint) for f in found], dtype=object)
        infos = u_info[codes]
        bad = u_error[codes]
        status[bad] = REJECTED
        field[bad] = "file"
        reason[bad] = u_reason[codes][bad]
        file_hash = u_hash[codes]

    # the vendor's check, once the file is stat'ed
    ok = status == SEND
    own_check = type(connector).check is not BaseConnector.check if isinstance(connector, BaseConnector) \
        else hasattr(connector, "check")
    if spec.files and own_check and ok.any():
        vector = getattr(connector, "check_frame", None)
        checked = None
        if vector is not None:
            size = pd.Series([i.size if i is not None else None for i in infos], dtype="Int64", index=frame.index)
            try:
                checked = vector(frame, size)
            except Exception as exc:  # noqa: BLE001 - the per-row hook names the row that fails
                log.debug("%s.check_frame failed (%s); checking row by row", type(connector).__name__, exc)
        if checked is not None:
            f_col, r_col = checked
            hit = ok & r_col.notna().to_numpy(dtype=bool)
            status[hit] = REJECTED
            field[hit] = f_col.to_numpy(dtype=object)[hit]
            reason[hit] = r_col.to_numpy(dtype=object)[hit]
        else:
            where = np.flatnonzero(ok)
            _records_for(frame, where, records)
            for i in where:
                try:
                    problem = connector.check(records[i], infos[i])  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - this row's own problem, never its batch's
                    status[i], reason[i] = REJECTED, _cannot_prepare(exc)
                    continue
                if problem:
                    status[i], field[i], reason[i] = REJECTED, problem[0], problem[1]

    # content hashes, in bulk where the vendor offers a vectorised twin
    ok = np.flatnonzero(status == SEND)
    if len(ok):
        texts = _content_texts(connector, frame, ok, records, status, reason)
        for i, text in zip(ok, texts):
            if text is not None:
                hashes[i] = content_hash(text, file_hash[i])

    # skip unchanged; intent rows of a non-idempotent vendor are reconciled first
    prior_list: list[LedgerEntry | None] = [priors.get(i) for i in ids] if priors else [None] * n
    reconcile = np.zeros(n, dtype=bool)
    if priors:
        done = spec.done_statuses
        for i, prior in enumerate(prior_list):
            if prior is None or status[i] != SEND:
                continue
            if prior.status in done and prior.hash == hashes[i]:
                status[i] = LOADED if run_id is not None and prior.run == run_id else UNCHANGED
            elif prior.status == INTENT and not spec.idempotent:
                reconcile[i] = True
    return Decisions(ids, status, field, reason, infos, file_hash, hashes, prior_list, reconcile, records, stats)


def _cannot_prepare(exc: Exception) -> str:
    return f"cannot prepare this row ({type(exc).__name__}: {exc})"[:300]


def _content_texts(connector: Connector, frame: pd.DataFrame, positions: np.ndarray,
                   records: list[dict[str, Any] | None], status: np.ndarray,
                   reason: np.ndarray) -> list[str | None]:
    """The content JSON of the rows at ``positions`` (None where building it failed: the row is
    rejected here with the reason)."""
    vector = getattr(connector, "content_frame", None)
    if vector is not None and len(positions) >= BULK_MIN_ROWS:
        try:
            part = frame.iloc[positions] if len(positions) != len(frame) else frame
            return list(json_texts(vector(part)))
        except Exception as exc:  # noqa: BLE001 - fall back to the per-row hook, which names the row
            log.debug("%s.content_frame failed (%s); building the content row by row", type(connector).__name__, exc)
    _records_for(frame, positions, records)
    out: list[str | None] = []
    for i in positions:
        try:
            out.append(_dumps(connector.content(records[i])))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - this row's own problem, never its batch's
            status[i], reason[i] = REJECTED, _cannot_prepare(exc)
            out.append(None)
    return out


# -- JSON in bulk -----------------------------------------------------------------------------
def json_texts(frame: pd.DataFrame) -> np.ndarray:
    """Each row of ``frame`` as ``json.dumps(row_dict, sort_keys=True, ensure_ascii=False,
    default=str)`` would write it, built column by column: strings and lists of strings in Arrow,
    anything else per distinct value through ``json.dumps``. Column names are the keys."""
    n = len(frame)
    if n == 0:
        return np.empty(0, dtype=object)
    keys = sorted(map(str, frame.columns))
    if len(keys) != frame.shape[1]:
        raise ValueError("duplicate keys")
    by_key = {str(c): c for c in frame.columns}
    parts: list[pa.Array] = []
    for k, key in enumerate(keys):
        prefix = ("{" if k == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": "
        parts.append(_lit(prefix))
        parts.append(json_values(frame[by_key[key]]))
    parts.append(_lit("}"))
    joined = pc.binary_join_element_wise(*parts, _lit(""))
    return joined.to_numpy(zero_copy_only=False)


def json_values(values: pd.Series) -> pa.Array:
    """``json.dumps(v, ensure_ascii=False, default=str)`` of each value (Arrow large_string).
    A missing value in a string column is None (``null``); in an object column ``None`` is null
    and ``pd.NA`` is ``"<NA>"`` (what ``default=str`` makes of it)."""
    n = len(values)
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        array = pa.array(values.array, type=pa.large_string(), from_pandas=True)
        return _json_strings(array)
    objects = values.to_numpy(dtype=object)
    kinds = set(map(type, objects))
    if kinds <= {str, type(None)}:
        return _json_strings(pa.array(objects, type=pa.large_string()))
    if kinds <= {list} and all(all(type(t) is str for t in v) for v in objects):
        return _json_string_lists(objects)
    cache: dict[Any, str] = {}
    out = np.empty(n, dtype=object)
    for i, v in enumerate(objects):
        key = (type(v), v)  # True == 1 but dumps differently
        try:
            out[i] = cache[key]
        except (KeyError, TypeError):
            text = _dumps(v)
            try:
                cache[key] = text
            except TypeError:
                pass
            out[i] = text
    return pa.array(out, type=pa.large_string())


def _lit(text: str) -> pa.Scalar:
    return pa.scalar(text, type=pa.large_string())


def _json_strings(array: pa.Array) -> pa.Array:
    """JSON string literals (``null`` for nulls) of an Arrow string array."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    control = pc.fill_null(pc.match_substring_regex(array, _JSON_CONTROL), False)
    escaped = pc.replace_substring(pc.replace_substring(array, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise(_lit('"'), escaped.cast(pa.large_string()), _lit('"'), _lit(""))
    if pc.any(control).as_py():
        texts = quoted.to_numpy(zero_copy_only=False)
        raw = array.to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(control.to_numpy(zero_copy_only=False)):
            texts[i] = json.dumps(raw[i], ensure_ascii=False)
        quoted = pa.array(texts, type=pa.large_string())
    return pc.fill_null(quoted.cast(pa.large_string()), "null")


def _json_string_lists(objects: np.ndarray) -> pa.Array:
    lists = pa.array(list(objects), type=pa.large_list(pa.large_string()))
    items = _json_strings(lists.flatten())
    rebuilt = pa.LargeListArray.from_arrays(lists.offsets, items)
    inner = pc.binary_join(rebuilt, _lit(", "))
    return pc.binary_join_element_wise(_lit("["), inner, _lit("]"), _lit(""))



# -- validate: counts without building every request -------------------------------------------
@dataclass
class Preview:
    """What ``Loader.plan`` would yield for a frame, summed: rows per action (``reject`` and
    ``unchanged`` included), the rejected rows (``source``, ``row``, ``id``, ``field``,
    ``reason``) in row order, and the first ``sample`` planned units with their exact requests."""

    counts: Counter[str]
    rejects: list[dict[str, Any]]
    samples: list[Any]


def preview(loader: Any, frame: pd.DataFrame, priors: dict[str, LedgerEntry], sample: int,
            stats_cache: dict[str, FileInfo] | None = None) -> Preview | None:
    """The counts ``Loader.plan`` would give, without a request per row: the actions come from the
    connector's vectorised ``plan_actions`` (one-row units only), the sample units from its own
    ``plan``. None when the connector has no ``plan_actions`` or its units hold several rows: the
    caller then iterates ``Loader.plan``. ``stats_cache``: see :func:`decide`."""
    from assetferry.connectors.core.loader import PlanItem
    from assetferry.connectors.vendors.base import Row, Unit

    connector = loader.connector
    actions_of = getattr(connector, "plan_actions", None)
    if actions_of is None or connector.spec.unit.kind != "row":
        return None
    d = decide(connector, frame, priors, stats_cache=stats_cache)
    counts: Counter[str] = Counter()
    sources = frame["_source"].tolist() if "_source" in frame.columns else [None] * len(frame)
    rows = frame["_row"].tolist() if "_row" in frame.columns else [None] * len(frame)
    rejected = np.flatnonzero(d.status == REJECTED)
    rejects = [{"source": sources[i], "row": rows[i], "id": d.ids[i], "field": d.field[i],
                "reason": d.reason[i] or None} for i in rejected]
    counts["reject"] += len(rejected)
    counts["unchanged"] += int(np.isin(d.status, (UNCHANGED, LOADED)).sum())
    send = np.flatnonzero(d.status == SEND)
    samples = []
    if len(send):
        part = frame.iloc[send] if len(send) != len(frame) else frame
        actions = pd.Series(np.asarray(actions_of(part, [d.priors[i] for i in send], d.file_hash[send]),
                                       dtype=object))
        actions = actions.where(~d.reconcile[send], "reconcile+" + actions)
        counts.update(actions.value_counts().to_dict())
        first = send[:max(0, sample)]
        d.fill_records(frame, first)
        for i in first:
            row = Row(id=d.ids[i], data=d.records[i], index=int(i), info=d.infos[i], prior=d.priors[i],
                      hash=d.hash[i], file_hash=d.file_hash[i], reconcile=bool(d.reconcile[i]))
            plan = connector.plan(Unit([row]))
            action = f"reconcile+{plan.action}" if row.reconcile else plan.action
            samples.append(PlanItem([row.id], action, plan.requests, where=[(sources[i], rows[i])]))
    return Preview(counts, rejects, samples)
