"""The ledger: last writer by time, torn tails, durable intent on object stores, incremental
compaction that never folds a live run's journal, and columnar lookups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from assetferry.connectors.core.ledger import MAX_SEGMENTS, Ledger, entry


def test_last_line_wins_torn_tail_ignored(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "state"))
    with ledger.writer("run1", 0) as w:
        w.record(entry("a", "uploaded", "run1", file_ref="f1"))
        w.record(entry("a", "loaded", "run1", hash="h1", vendor_id="v1", file_ref="f1", extra={"url": "u"}))
        w.record(entry("b", "intent", "run1"))
    with ledger.writer("run2", 0) as w:
        w.record(entry("b", "loaded", "run2", hash="h2", vendor_id="v2"))
    journal = next((tmp_path / "state" / "journal").glob("run2-*.jsonl"))
    with journal.open("a") as f:
        f.write('{"id": "c", "status": "lo')  # a killed writer's torn line
    entries = ledger.load()
    assert entries["a"].status == "loaded" and entries["a"].vendor_id == "v1"
    assert entries["a"].extra == {"url": "u"} and entries["a"].file_ref == "f1"
    assert entries["b"].status == "loaded" and entries["b"].run == "run2"
    assert "c" not in entries and len(entries) == 2
    assert entries.get_many(["a", "zz", "b"]).keys() == {"a", "b"}


def test_last_writer_is_by_time_not_by_file_name(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    late = entry("a", "loaded", "zzz-run", hash="new")
    with ledger.writer("aaa-run", 0) as w:  # sorts first by name, but written later
        w.record(late)
    with ledger.writer("zzz-run", 0) as w:
        w.record(entry("a", "loaded", "zzz-run", hash="old").__class__(**{**late.__dict__, "hash": "old",
                                                                              "at": "2020-01-01T00:00:00+00:00"}))
    assert ledger.load()["a"].hash == "new"


def test_compaction_folds_finished_runs_only_and_is_incremental(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.writer("r1", 0) as w:
        w.record(entry("a", "loaded", "r1", hash="1"))
    live = ledger.writer("r2", 0)  # a concurrent run, still writing
    live.record(entry("b", "loaded", "r2", hash="2"))
    assert ledger.compact(["r1"]) == 1
    journals = sorted(p.name for p in (tmp_path / "journal").glob("*.jsonl"))
    assert journals == ["r2-b000000.jsonl"]  # the live run's journal is untouched
    live.record(entry("c", "loaded", "r2", hash="3"))
    live.close()
    assert ledger.load().keys() == {"a", "b", "c"}
    segments = list((tmp_path / "segments").glob("*.parquet"))
    assert len(segments) == 1
    before = {p: p.stat().st_mtime_ns for p in segments}
    assert ledger.compact(["r3"]) == 0  # a run that wrote nothing writes nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "segments").glob("*.parquet")} == before
    assert ledger.compact(["r2"]) == 2
    assert ledger.load().keys() == {"a", "b", "c"}


def test_stale_journals_of_killed_runs_are_folded(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.writer("killed", 0) as w:
        w.record(entry("a", "loaded", "killed", hash="1"))
    path = next((tmp_path / "journal").glob("*.jsonl"))
    os.utime(path, (1, 1))  # untouched for decades
    assert ledger.compact(["other"]) == 1
    assert not list((tmp_path / "journal").glob("*.jsonl"))
    assert ledger.load()["a"].hash == "1"


def test_segments_are_merged_past_the_limit(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    for i in range(MAX_SEGMENTS + 1):
        with ledger.writer(f"r{i}", 0) as w:
            w.record(entry("same", "loaded", f"r{i}", hash=str(i)))
            w.record(entry(f"only-{i}", "loaded", f"r{i}", hash=str(i)))
        ledger.compact([f"r{i}"])
    assert len(list((tmp_path / "segments").glob("*.parquet"))) == 1
    index = ledger.load()
    assert index["same"].hash == str(MAX_SEGMENTS) and len(index) == MAX_SEGMENTS + 2


def test_legacy_snapshot_is_read_and_folded(tmp_path: Path) -> None:
    (tmp_path / "snapshot.jsonl").write_text(json.dumps({"id": "old", "status": "loaded", "hash": "h",
                                                         "at": "2025-01-01T00:00:00+00:00"}) + "\n")
    ledger = Ledger(str(tmp_path))
    assert ledger.load()["old"].hash == "h"
    with ledger.writer("r", 0) as w:
        w.record(entry("new", "loaded", "r"))
    ledger.compact(["r"])
    assert not (tmp_path / "snapshot.jsonl").exists()
    assert ledger.load().keys() == {"old", "new"}


def test_batch_entries_returns_an_earlier_attempt(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    with ledger.writer("r", 3) as w:
        w.record(entry("x", "loaded", "r", hash="h"))
    assert ledger.batch_entries("r", 3)["x"].hash == "h"
    assert ledger.batch_entries("r", 4) == {}


@pytest.fixture
def s3_ledger(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    import s3fs

    monkeypatch.setenv("ASSETFERRY_WAL_DIR", str(tmp_path / "wal"))
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"ledger-{os.getpid()}-{len(str(tmp_path)) % 97}-{tmp_path.name[-8:].lower().replace('_', '-')}"
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return f"s3://{bucket}/state", options


def test_object_store_intent_is_durable_before_the_batch_ends(s3_ledger: tuple[str, dict], tmp_path: Path) -> None:
    url, options = s3_ledger
    ledger = Ledger(url, options)
    writer = ledger.writer("run", 0)
    writer.record(entry("a", "intent", "run", hash="h"))
    # ... the process is SIGKILLed here: the write-ahead file is on local disk, flushed.
    wal = list((tmp_path / "wal").rglob("*.jsonl"))
    assert len(wal) == 1 and '"intent"' in wal[0].read_text()
    # A live writer's file is never shipped by another reader.
    assert Ledger(url, options).recover() == 0
    writer._file.close()  # the kill releases the lock without shipping
    writer._file = None
    resumed = Ledger(url, options).load()
    assert resumed["a"].status == "intent"
    assert not list((tmp_path / "wal").rglob("*.jsonl"))  # shipped to the store


def test_object_store_journal_ships_at_batch_end_and_compacts(s3_ledger: tuple[str, dict]) -> None:
    url, options = s3_ledger
    ledger = Ledger(url, options)
    with ledger.writer("run", 0) as w:
        w.record(entry("a", "loaded", "run", hash="1"))
        w.record(entry("b", "loaded", "run", hash="2"))
    assert Ledger(url, options).load().keys() == {"a", "b"}
    assert ledger.compact(["run"]) == 2
    assert Ledger(url, options).load()["b"].hash == "2"
