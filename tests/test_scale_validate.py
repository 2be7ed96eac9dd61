"""Issue 19, transform at scale: the vectorised decisions (``connectors.core.decide``) give exactly
what the per-row loop gave (outcomes, reasons, ledger hashes), ``validate``'s bulk counts equal
the full plan's, each distinct file is stat'ed once, and reading a large manifest stays flat."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from assetferry.connectors.core import loader as loader_module
from assetferry.connectors.core.decide import (
    content_hash,
    decide,
    digest,
    json_texts,
    preview,
)
from assetferry.connectors.core.files import display_url
from assetferry.connectors.core.job import load_job
from assetferry.connectors.core.ledger import INTENT, entry
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.pipeline import Pipeline, make_connector

from tests import kit

TRICKY = ['plain', 'with "quotes"', "back\\slash", "new\nline", "tab\there", "ctl\x01char", "café ✓ 日本",
          "</script>", "ends with \\", "\u2028sep", "~/.;"]


def _manifest(folder: Path, n: int = 60) -> Path:
    """A varied manifest: tricky text, blanks, tags, shared and missing files, ids needing escapes."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        (files / f"f{k}.png").write_bytes(b"x" * (10 + 2000 * k))  # f3, f4 are over the tiny size limit
    rows = []
    for i in range(n):
        rows.append({
            "id": [f"SKU-{i}", f"a/b.{i}", f"x;y~{i}"][i % 3],
            "title": TRICKY[i % len(TRICKY)] if i % 7 else "",
            "description": TRICKY[(i * 5) % len(TRICKY)] if i % 4 else "",
            "file": f"files/f{i % 5}.png" if i % 11 else "files/missing.png",
            "tags": ["a|b", "", "  c  |d|", 'q"uote|back\\'][i % 4],
            "language": "default" if i % 2 else "en-US",
            "folder": "" if i % 3 else "Photos",
        })
    return kit.write_csv(folder / "m.csv", rows)


def _setup(where: Path, **settings: Any) -> tuple[Any, Any, pd.DataFrame]:
    folder = where
    _manifest(folder)
    data = kit.job_dict("m.csv", "http://127.0.0.1:9", Path("state"),
                        settings={"max_file_mb": 0.003, "tags_element": "tags", **settings})
    job = load_job(kit.write_job(folder / "job.yaml", data))
    connector = make_connector(job, credentials={})
    [(ready, _)] = list(Pipeline(job, connector).prepared())
    return job, connector, ready


def _old_rows(connector: Any, frame: pd.DataFrame, priors: dict[str, Any], run_id: str | None = None) -> list[tuple]:
    """The per-row loop ``Loader.rows`` had before it was vectorised (the reference)."""
    records = frame.to_dict("records")
    infos = [connector.files.stat(r["file"]) for r in records]
    out = []
    for index, (data, info) in enumerate(zip(records, infos)):
        rid = str(data["id"])
        prior = priors.get(rid)
        if info.error:
            out.append((index, rid, "rejected", "file", f"{info.error}: {display_url(str(data['file']))}", None))
            continue
        problem = connector.check(data, info)
        if problem:
            out.append((index, rid, "rejected", problem[0], problem[1], None))
            continue
        content = json.dumps(connector.content(data), sort_keys=True, ensure_ascii=False, default=str)
        fingerprint = hashlib.blake2b(info.fingerprint.encode(), digest_size=8).hexdigest()
        row_hash = hashlib.blake2b((content + "|" + fingerprint).encode(), digest_size=8).hexdigest()
        if prior is not None and prior.status in connector.spec.done_statuses and prior.hash == row_hash:
            same_run = run_id is not None and prior.run == run_id
            out.append((index, rid, "loaded" if same_run else "unchanged", None, None, None))
            continue
        out.append((index, rid, "send", None, None, row_hash))
    return out


def _new_rows(loader: Loader, frame: pd.DataFrame, priors: dict[str, Any], run_id: str | None = None) -> list[tuple]:
    todo, decided = loader.rows(frame, priors, run_id)
    out = [(i, o.id, o.status, o.field, o.reason or None, None) for i, o in decided]
    out += [(r.index, r.id, "send", None, None, r.hash) for r in todo]
    return sorted(out)


def _priors(connector: Any, ready: pd.DataFrame) -> dict[str, Any]:
    """Ledger entries for some rows: same hash (unchanged), other hash, intent, same file ref."""
    old = _old_rows(connector, ready, {})
    sent = [r for r in old if r[2] == "send"]
    priors = {}
    for k, (_, rid, _, _, _, row_hash) in enumerate(sent[:12]):
        if k % 4 == 0:
            priors[rid] = entry(rid, "loaded", "r1", hash=row_hash, vendor_id=f"v{k}")
        elif k % 4 == 1:
            priors[rid] = entry(rid, "loaded", "r1", hash="0" * 16, vendor_id=f"v{k}")
        elif k % 4 == 2:
            priors[rid] = entry(rid, INTENT, "r1", hash=row_hash)
        else:
            d = decide(connector, ready[ready["id"] == rid].reset_index(drop=True), {})
            priors[rid] = entry(rid, "loaded", "r1", hash="1" * 16, vendor_id=f"v{k}", file_ref="ref-1",
                                file_hash=d.file_hash[0])
    return priors


def test_digest_is_the_loaders_and_the_hash_definition_is_unchanged() -> None:
    assert digest("abc") == loader_module.digest("abc") == hashlib.blake2b(b"abc", digest_size=8).hexdigest()
    assert content_hash('{"a": 1}', "f") == digest('{"a": 1}|f')


@pytest.mark.parametrize("bulk_from", [0, 10_000])  # content in bulk, or row by row (small batches)
def test_vectorised_rows_equal_the_per_row_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                bulk_from: int) -> None:
    monkeypatch.setattr("assetferry.connectors.core.decide.BULK_MIN_ROWS", bulk_from)
    _, connector, ready = _setup(tmp_path)
    priors = _priors(connector, ready)
    loader = Loader(connector)

    old = _old_rows(connector, ready, priors)
    new = _new_rows(loader, ready, priors)

    assert new == old  # same outcomes, reasons and ledger hashes, row for row
    statuses = Counter(r[2] for r in new)
    assert statuses["rejected"] >= 10 and statuses["unchanged"] == 3 and statuses["send"] >= 8, statuses
    assert _new_rows(loader, ready, priors, run_id="r1") == _old_rows(connector, ready, priors, run_id="r1")


def test_content_in_bulk_equals_json_dumps_of_content(tmp_path: Path) -> None:
    for settings in ({}, {"tags_element": None, "folder": "Default folder", "descriptions": "replace"}):
        _, connector, ready = _setup(tmp_path / str(len(settings)), **settings)
        bulk = json_texts(connector.content_frame(ready))
        one_by_one = [json.dumps(connector.content(r), sort_keys=True, ensure_ascii=False, default=str)
                      for r in ready.to_dict("records")]
        assert list(bulk) == one_by_one


def test_json_texts_matches_json_dumps_for_every_kind_of_value() -> None:
    rows = [{"s": t, "o": v, "l": lst, "n": num}
            for t, v, lst, num in zip(TRICKY, [None, pd.NA, "x", 1, 2.5, {"b": 1, "a": [1]}, True, "y", None, "z", 3],
                                      [[], ["a"], ['q"', "\\"], ["\n", "é"], [], ["x", "y"], [], ["\x02"], [], [], ["~"]],
                                      range(11))]
    frame = pd.DataFrame(rows)
    frame["s"] = frame["s"].astype("string")
    frame.loc[3, "s"] = pd.NA
    # a missing string is null; in an object column None is null and pd.NA is "<NA>" (default=str)
    values = {c: [None if v is pd.NA and c == "s" else v for v in frame[c].to_numpy(dtype=object)] for c in frame}
    expected = [json.dumps({c: values[c][i] for c in frame}, sort_keys=True, ensure_ascii=False, default=str)
                for i in range(len(frame))]
    assert list(json_texts(frame)) == expected


def test_validate_bulk_counts_equal_the_full_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("assetferry.connectors.core.decide.BULK_MIN_ROWS", 0)
    _, connector, ready = _setup(tmp_path)
    priors = _priors(connector, ready)
    loader = Loader(connector)

    items = list(loader.plan(ready, priors))
    quick = preview(loader, ready, priors, sample=3)

    assert quick is not None
    full = Counter()
    for item in items:
        full[item.action] += len(item.ids)
    assert quick.counts == full
    assert {"upload+upsert", "upsert", "reconcile+upload+upsert"} >= {a for a in full if a not in ("reject", "unchanged")}
    assert quick.rejects == [{"source": i.where[0][0], "row": i.where[0][1], "id": i.ids[0], "field": i.field,
                              "reason": i.reason} for i in items if i.action == "reject"]
    with_requests = [i for i in items if i.requests][:3]
    assert [s.to_dict() for s in quick.samples] == [i.to_dict() for i in with_requests]


def test_each_distinct_file_is_stated_once_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, connector, ready = _setup(tmp_path)
    calls: list[str] = []
    real = connector.files.stat

    def counting(url: str) -> Any:
        calls.append(url)
        return real(url)

    monkeypatch.setattr(connector.files, "stat", counting)
    Loader(connector).rows(ready, {})
    assert len(ready) > 30 and len(calls) == len(set(calls)) == ready["file"].nunique() == 6

    # validate (a snapshot) remembers stats across chunks; a load stats each batch afresh
    calls.clear()
    cache: dict[str, Any] = {}
    for part in (ready.iloc[:20], ready.iloc[20:]):
        preview(Loader(connector), part.reset_index(drop=True), {}, 0, cache)
    assert len(calls) == 6
    Loader(connector).rows(ready.iloc[:20].reset_index(drop=True), {})
    assert len(calls) == 6 + ready.iloc[:20]["file"].nunique()


def test_remote_files_are_stated_concurrently_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from assetferry.connectors.core.files import FileInfo, FileStore

    store = FileStore()
    seen: list[tuple[str, str]] = []
    gate = threading.Barrier(4, timeout=10)  # four stats must be in flight together

    def slow(url: str) -> FileInfo:
        seen.append((url, threading.current_thread().name))
        gate.wait()
        return FileInfo(1, url)

    monkeypatch.setattr(store, "stat", slow)
    urls = [f"s3://b/k{i % 8}.png" for i in range(400)]
    infos = store.stat_many(list(dict.fromkeys(urls)))
    assert len(seen) == 8 and len({t for _, t in seen}) >= 4 and all(i.size == 1 for i in infos)


def _big_manifest(path: Path, rows: int) -> None:
    ids = pd.Series(np.arange(rows)).map("ID-{:07d}".format)
    frame = pd.DataFrame({"id": ids, "title": "Title " + ids, "description": "A product shot, studio light",
                          "file": "files/f1.png", "tags": "a|b", "language": "default"})
    frame.to_csv(path, index=False)


def test_reading_and_deciding_a_large_manifest_stays_flat(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "f1.png").write_bytes(b"png")
    peaks = {}
    for rows in (20_000, 200_000):
        _big_manifest(tmp_path / "m.csv", rows)
        job = load_job(kit.write_job(tmp_path / "job.yaml", kit.job_dict("m.csv", "http://127.0.0.1:9", Path("s"))))
        connector = make_connector(job, credentials={})
        pipeline, loader = Pipeline(job, connector, chunk_rows=10_000), Loader(connector)
        counted = Counter()
        tracemalloc.start()
        try:
            for ready, _ in pipeline.prepared():
                counted.update(preview(loader, ready, {}, 0).counts)
            peaks[rows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert pipeline.counts.read == rows and +counted == {"upload+upsert": rows}
    # ten times the rows, (nearly) the same peak: one chunk at a time, never the whole manifest;
    # what grows is the duplicate tracker, 24 bytes per distinct id (about 4 MB for 180,000 more)
    assert peaks[200_000] < 1.2 * peaks[20_000] + 8 * 2**20, peaks
    assert peaks[200_000] < 48 * 2**20, peaks
