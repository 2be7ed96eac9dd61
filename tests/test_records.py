"""canonicalize(), DuplicateTracker, rejects_frame() and the since/until window."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.records import (
    CANONICAL_COLUMNS,
    REJECT_COLUMNS,
    REQUIRED,
    DuplicateTracker,
    canonicalize,
    in_window,
    parse_window,
    rejects_frame,
)
from assetferry.connectors.sources.base import RecordChunk


def _csv_chunk(rows: list[dict[str, str]], source: str = "m.csv", first_row: int = 1) -> RecordChunk:
    """A chunk as ManifestSource yields it for CSV: every value a string, "" for empty cells."""
    frame = pd.DataFrame(rows).fillna("").astype(str)
    return RecordChunk(frame=frame, source=source, first_row=first_row)


def _run(chunk: RecordChunk, tracker: DuplicateTracker | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    return canonicalize(chunk, tracker if tracker is not None else DuplicateTracker())


def test_schema_constants() -> None:
    assert CANONICAL_COLUMNS[:4] == ("id", "title", "description", "file")
    assert CANONICAL_COLUMNS[-1] == "updated_at"
    assert REQUIRED == ("id", "file")
    assert REJECT_COLUMNS == ("source", "row", "id", "field", "reason", "record")


def test_good_frame_shape_defaults_and_pass_through() -> None:
    chunk = _csv_chunk(
        [
            {"id": "a1", "file": "/data/photos/cat.JPG", "title": "  Cat ", "shelf": "B7"},
            {"id": "a2", "file": "https://cdn.example.com/docs/report.pdf?sig=abc#page=2", "title": "", "shelf": ""},
        ],
        source="s3://b/m.csv",
        first_row=11,
    )

    good, rejects = _run(chunk)

    assert rejects.empty
    assert list(good.columns) == [*CANONICAL_COLUMNS, "shelf", "_source", "_row"]
    assert list(good.index) == [0, 1]
    assert good["id"].tolist() == ["a1", "a2"]
    assert good["title"].iloc[0] == "Cat"
    assert good["title"].iloc[1] is pd.NA
    assert good["file_name"].tolist() == ["cat.JPG", "report.pdf"]
    assert good["content_type"].tolist() == ["image/jpeg", "application/pdf"]
    assert good["shelf"].tolist() == ["B7", ""]  # pass-through columns are untouched
    assert good["_source"].tolist() == ["s3://b/m.csv", "s3://b/m.csv"]
    assert good["_row"].tolist() == [11, 12]
    assert good["_row"].dtype == np.int64
    for column in ("description", "category", "language", "parent"):
        assert good[column].isna().all()
    assert good["updated_at"].isna().all()
    assert str(good["updated_at"].dtype) == "datetime64[us, UTC]"


def test_explicit_file_name_and_content_type_win_over_defaults() -> None:
    chunk = _csv_chunk(
        [
            {"id": "a", "file": "s3://b/k/blob", "file_name": " Nice Name.png ", "content_type": "image/x-custom"},
            {"id": "b", "file": "s3://b/k/data.unknownext", "file_name": "", "content_type": ""},
            {"id": "c", "file": "s3://b/k/archive.tar.gz", "file_name": "", "content_type": ""},
            {"id": "d", "file": "/local/#1 draft?.txt", "file_name": "", "content_type": ""},
        ]
    )
    good, _ = _run(chunk)
    assert good["file_name"].tolist() == ["Nice Name.png", "data.unknownext", "archive.tar.gz", "#1 draft?.txt"]
    assert good["content_type"].tolist() == [
        "image/x-custom",
        "application/octet-stream",
        "application/gzip",
        "text/plain",
    ]


def test_tags_from_csv_strings_are_split_and_trimmed() -> None:
    chunk = _csv_chunk(
        [
            {"id": "a", "file": "a.jpg", "tags": " red | blue|| "},
            {"id": "b", "file": "b.jpg", "tags": ""},
            {"id": "c", "file": "c.jpg", "tags": "solo"},
            {"id": "d", "file": "d.jpg", "tags": " | "},
        ]
    )
    good, _ = _run(chunk)
    assert good["tags"].tolist() == [["red", "blue"], [], ["solo"], []]
    assert all(type(tags) is list for tags in good["tags"])


def test_tags_from_lists_and_arrays() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "file": ["a.jpg"] * 5,
            "tags": [[" x ", "", "y"], [], None, np.array(["p", "q"]), "m|n"],
        }
    )
    good, _ = _run(RecordChunk(frame, "m.json", 1))
    assert good["tags"].tolist() == [["x", "y"], [], [], ["p", "q"], ["m", "n"]]


def test_missing_tags_column_gives_empty_lists() -> None:
    good, _ = _run(_csv_chunk([{"id": "a", "file": "a.jpg"}, {"id": "b", "file": "b.jpg"}]))
    assert good["tags"].tolist() == [[], []]


def test_whitespace_only_and_na_values_become_na() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "file": ["a.jpg", "b.jpg", "c.jpg"],
            "title": ["   ", None, np.nan],
            "category": pd.Series([pd.NA, "  x  ", ""], dtype="string"),
        }
    )
    good, _ = _run(RecordChunk(frame, "m.json", 1))
    assert good["title"].isna().all()
    assert good["category"].isna().tolist() == [True, False, True]
    assert good["category"].iloc[1] == "x"


def test_numeric_ids_from_json_are_text_without_float_noise() -> None:
    frame = pd.DataFrame({"id": [1.0, 2.0, np.nan], "file": ["a.jpg", "b.jpg", "c.jpg"]})
    good, rejects = _run(RecordChunk(frame, "m.json", 1))
    assert good["id"].tolist() == ["1", "2"]
    assert rejects["reason"].tolist() == ["missing id"]


def test_updated_at_parsing_to_utc() -> None:
    chunk = _csv_chunk(
        [
            {"id": "a", "file": "a.jpg", "updated_at": "2024-01-31T12:00:00+02:00"},
            {"id": "b", "file": "b.jpg", "updated_at": "2024-01-31"},
            {"id": "c", "file": "c.jpg", "updated_at": "2024-01-31T10:00:00Z"},
            {"id": "d", "file": "d.jpg", "updated_at": ""},
        ]
    )
    good, rejects = _run(chunk)
    assert rejects.empty
    assert good["updated_at"].tolist()[:3] == [
        pd.Timestamp("2024-01-31T10:00:00Z"),
        pd.Timestamp("2024-01-31T00:00:00Z"),
        pd.Timestamp("2024-01-31T10:00:00Z"),
    ]
    assert pd.isna(good["updated_at"].iloc[3])


def test_updated_at_from_parquet_datetimes() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "file": ["a.jpg", "b.jpg"],
            "updated_at": pd.to_datetime(["2024-01-01T05:00:00", None]),  # naive means UTC
        }
    )
    good, rejects = _run(RecordChunk(frame, "m.parquet", 1))
    assert rejects.empty
    assert good["updated_at"].iloc[0] == pd.Timestamp("2024-01-01T05:00:00Z")
    assert pd.isna(good["updated_at"].iloc[1])


def test_each_reject_reason_field_and_row() -> None:
    chunk = _csv_chunk(
        [
            {"id": "ok1", "file": "a.jpg", "updated_at": ""},
            {"id": "  ", "file": "b.jpg", "updated_at": "not a date"},  # missing id wins over the date
            {"id": "bad\x07id", "file": "c.jpg", "updated_at": ""},
            {"id": "nofile", "file": " ", "updated_at": "garbage"},  # missing file wins over the date
            {"id": "baddate", "file": "d.jpg", "updated_at": "31/01/2024"},
            {"id": "ok1", "file": "e.jpg", "updated_at": ""},
        ],
        source="m.csv",
        first_row=101,
    )

    good, rejects = _run(chunk)

    assert good["id"].tolist() == ["ok1"]
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    assert rejects[["row", "field", "reason"]].values.tolist() == [
        [102, "id", "missing id"],
        [103, "id", "id contains control characters"],
        [104, "file", "missing file"],
        [105, "updated_at", "invalid timestamp '31/01/2024'"],
        [106, "id", "duplicate id 'ok1' (first seen at m.csv row 101)"],
    ]
    assert rejects["source"].unique().tolist() == ["m.csv"]
    assert rejects["id"].iloc[0] is pd.NA
    assert rejects["id"].tolist()[1:] == ["bad\x07id", "nofile", "baddate", "ok1"]
    assert rejects["row"].dtype == np.int64


def test_duplicates_within_a_chunk_keep_the_first() -> None:
    chunk = _csv_chunk(
        [
            {"id": "x", "file": "1.jpg"},
            {"id": "y", "file": "2.jpg"},
            {"id": "x", "file": "3.jpg"},
            {"id": " x ", "file": "4.jpg"},
        ],
        first_row=1,
    )
    good, rejects = _run(chunk)
    assert good["file"].tolist() == ["1.jpg", "2.jpg"]
    assert rejects["row"].tolist() == [3, 4]
    # ids are never trimmed: " x " is refused for its whitespace, not taken for "x"
    assert rejects["reason"].tolist() == ["duplicate id 'x' (first seen at m.csv row 1)",
                                          "id has leading or trailing whitespace: ' x '"]


def test_duplicates_across_chunks_and_files_name_first_location() -> None:
    tracker = DuplicateTracker()
    first = _csv_chunk([{"id": f"r{i}", "file": f"{i}.jpg"} for i in range(1, 4)], source="a.csv", first_row=1)
    second = _csv_chunk(
        [{"id": "r4", "file": "4.jpg"}, {"id": "r2", "file": "dup.jpg"}, {"id": "r4", "file": "dup2.jpg"}],
        source="a.csv",
        first_row=4,
    )
    third = _csv_chunk([{"id": "r3", "file": "x.jpg"}, {"id": "r9", "file": "9.jpg"}], source="b.csv", first_row=1)

    g1, r1 = canonicalize(first, tracker)
    g2, r2 = canonicalize(second, tracker)
    g3, r3 = canonicalize(third, tracker)

    assert r1.empty and len(g1) == 3
    assert g2["id"].tolist() == ["r4"]
    assert r2[["row", "reason"]].values.tolist() == [
        [5, "duplicate id 'r2' (first seen at a.csv row 2)"],
        [6, "duplicate id 'r4' (first seen at a.csv row 4)"],
    ]
    assert g3["id"].tolist() == ["r9"]
    assert r3[["source", "row", "reason"]].values.tolist() == [
        ["b.csv", 1, "duplicate id 'r3' (first seen at a.csv row 3)"]
    ]
    assert len(tracker) == 5
    assert "r9" in tracker and "nope" not in tracker


def test_an_id_rejected_for_another_reason_is_not_a_duplicate_source() -> None:
    tracker = DuplicateTracker()
    first = _csv_chunk([{"id": "z", "file": ""}, {"id": "w", "file": "w.jpg", "updated_at": "bad"}])
    second = _csv_chunk(
        [{"id": "z", "file": "z.jpg"}, {"id": "w", "file": "w.jpg"}, {"id": "z", "file": "z2.jpg"}],
        source="n.csv",
    )

    _, r1 = canonicalize(first, tracker)
    g2, r2 = canonicalize(second, tracker)

    assert r1["reason"].tolist() == ["missing file", "invalid timestamp 'bad'"]
    assert g2["id"].tolist() == ["z", "w"]
    assert r2["reason"].tolist() == ["duplicate id 'z' (first seen at n.csv row 1)"]


def test_tracker_check_and_first_seen_directly() -> None:
    tracker = DuplicateTracker()
    ids = pd.Series(["a", "b", "a"], index=[10, 11, 12])
    rows = pd.Series([7, 8, 9], index=[10, 11, 12])

    assert tracker.check(ids, "s1", rows).tolist() == [False, False, True]
    again = tracker.check(pd.Series(["b", "c"]), "s2", pd.Series([1, 2]))
    assert again.tolist() == [True, False]

    where = tracker.first_seen(pd.Series(["a", "b", "c"]))
    assert where.values.tolist() == [["s1", 7], ["s1", 8], ["s2", 2]]
    with pytest.raises(KeyError):
        tracker.first_seen(pd.Series(["unknown"]))


def test_record_json_round_trips_the_original_row() -> None:
    original = {
        "id": " a ",
        "file": "s3://bucket/dir/ünï.jpg",
        "tags": "red|blue",
        "updated_at": "yesterday",
        "note": 'quote " and back\\slash /',
    }
    _, rejects = _run(_csv_chunk([original]))

    record = rejects["record"].iloc[0]
    assert json.loads(record) == original
    assert "\\/" not in record and "ünï" in record  # readable: no escaped slashes, no \\u escapes
    assert ": " not in record and ", " not in record.replace(' and ', '')  # compact


def test_record_json_keeps_json_types_and_nulls() -> None:
    frame = pd.DataFrame(
        {
            "id": pd.Series([None, 9007199254740993], dtype=object),
            "file": ["a.jpg", None],
            "tags": [["x", "y"], None],
            "size": pd.Series([12, None], dtype=object),
        }
    )
    _, rejects = _run(RecordChunk(frame, "m.jsonl", 1))
    assert [json.loads(r) for r in rejects["record"]] == [
        {"id": None, "file": "a.jpg", "tags": ["x", "y"], "size": 12},
        {"id": 9007199254740993, "file": None, "tags": None, "size": None},
    ]


def test_rejects_frame_on_canonical_rows_for_vendor_checks() -> None:
    good, _ = _run(
        _csv_chunk(
            [
                {"id": "a", "file": "a.jpg", "tags": "x|y", "updated_at": "2024-01-01T00:00:00Z"},
                {"id": "b", "file": "b.jpg"},
            ],
            source="m.csv",
            first_row=41,
        )
    )
    too_big = good["id"] == "a"

    rejects = rejects_frame(good[too_big], field="file", reason="file too large (12 GB > 5 GB)")

    assert rejects[["source", "row", "id", "field", "reason"]].values.tolist() == [
        ["m.csv", 41, "a", "file", "file too large (12 GB > 5 GB)"]
    ]
    record = json.loads(rejects["record"].iloc[0])
    assert "_source" not in record and "_row" not in record
    assert record["tags"] == ["x", "y"]
    assert record["file_name"] == "a.jpg"
    assert pd.Timestamp(record["updated_at"]) == pd.Timestamp("2024-01-01T00:00:00Z")


def test_rejects_frame_with_per_row_reasons_and_explicit_location() -> None:
    raw = pd.DataFrame({"id": ["p", "q"], "file": ["p.jpg", "q.jpg"]}, index=[5, 6])
    rejects = rejects_frame(
        raw,
        field=pd.Series(["file", "id"], index=[5, 6]),
        reason=pd.Series(["too big", "bad"], index=[5, 6]),
        source="listing",
        row=pd.Series([3, 4], index=[5, 6]),
    )
    assert list(rejects.index) == [0, 1]
    assert rejects[["source", "row", "field", "reason"]].values.tolist() == [
        ["listing", 3, "file", "too big"],
        ["listing", 4, "id", "bad"],
    ]
    with pytest.raises(ValueError, match="_source"):
        rejects_frame(raw, field="id", reason="x")
    with pytest.raises(ValueError, match="index"):
        rejects_frame(raw, field="id", reason=pd.Series(["a", "b"]), source="s", row=1)


def test_rejects_frame_empty_has_schema() -> None:
    good, rejects = _run(_csv_chunk([{"id": "a", "file": "a.jpg"}]))
    empty = rejects_frame(good.iloc[:0], field="file", reason="x")
    assert list(empty.columns) == list(REJECT_COLUMNS) == list(rejects.columns)
    assert empty.empty and rejects.empty


def test_empty_chunk() -> None:
    good, rejects = _run(RecordChunk(pd.DataFrame({"id": [], "file": []}, dtype=str), "m.csv", 1))
    assert good.empty and rejects.empty
    assert list(good.columns) == [*CANONICAL_COLUMNS, "_source", "_row"]


def test_duplicate_column_names_are_a_config_error() -> None:
    frame = pd.DataFrame([["a", "b", "f"]], columns=["id", "id", "file"])
    with pytest.raises(ConfigError, match="duplicate column"):
        _run(RecordChunk(frame, "m.csv", 1))


def test_window_filtering() -> None:
    good, _ = _run(
        _csv_chunk(
            [
                {"id": "before", "file": "a", "updated_at": "2023-12-31T23:59:59Z"},
                {"id": "start", "file": "b", "updated_at": "2024-01-01T00:00:00Z"},
                {"id": "inside", "file": "c", "updated_at": "2024-01-15"},
                {"id": "end", "file": "d", "updated_at": "2024-02-01T00:00:00Z"},
                {"id": "none", "file": "e", "updated_at": ""},
            ]
        )
    )
    since, until = parse_window("2024-01-01", "2024-02-01T00:00:00Z")

    assert good.loc[in_window(good, since, until), "id"].tolist() == ["start", "inside"]
    assert good.loc[in_window(good, since, None), "id"].tolist() == ["start", "inside", "end"]
    assert good.loc[in_window(good, None, until), "id"].tolist() == ["before", "start", "inside"]
    everything = in_window(good, None, None)
    assert everything.dtype == bool and everything.all()


def test_parse_window_values() -> None:
    assert parse_window(None, None) == (None, None)
    assert parse_window("", "  ") == (None, None)
    since, until = parse_window("2024-01-01T02:00:00+02:00", "2024-03-01")
    assert since == pd.Timestamp("2024-01-01T00:00:00Z")
    assert until == pd.Timestamp("2024-03-01T00:00:00Z")
    assert str(since.tz) == "UTC" and str(until.tz) == "UTC"


@pytest.mark.parametrize(
    ("since", "until", "option"),
    [("yesterday", None, "since"), (None, "2024-13-45", "until"), ("2024-02-01", "2024-01-01", "before until")],
)
def test_parse_window_errors_name_the_option(since: str | None, until: str | None, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        parse_window(since, until)
