"""ManifestSource against real files: local formats, globs, chunking, compression, errors, and S3 via moto."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.sources.base import RecordChunk, Source
from assetferry.connectors.sources.manifest import ManifestSource, display_url

ROWS = [
    {"id": "a1", "file": "s3://assets/a1.jpg", "title": "First", "tags": "red|blue"},
    {"id": "a2", "file": "/data/a2.pdf", "title": "", "tags": ""},
    {"id": "a3", "file": "https://cdn.example.com/a3.png?x=1", "title": "Third", "tags": "green"},
]


def _frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(ROWS[:n])


def _collect(source: ManifestSource, chunk_rows: int = 10_000) -> list[RecordChunk]:
    return list(source.chunks(chunk_rows=chunk_rows))


def _joined(chunks: list[RecordChunk]) -> pd.DataFrame:
    return pd.concat([c.frame for c in chunks], ignore_index=True)


def test_csv_round_trip_reads_every_value_as_string(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"id": ["007", "8"], "file": ["a.jpg", "b.jpg"], "size": ["12", ""]}).to_csv(path, index=False)

    chunks = _collect(ManifestSource(str(path)))

    assert len(chunks) == 1
    chunk = chunks[0]
    assert chunk.source == str(path)
    assert chunk.first_row == 1
    assert chunk.frame["id"].tolist() == ["007", "8"]  # leading zeros survive: nothing is inferred
    assert chunk.frame["size"].tolist() == ["12", ""]  # empty cell is "", not NaN
    assert list(chunk.frame.index) == [0, 1]


def test_manifest_source_satisfies_protocol(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    _frame().to_csv(path, index=False)
    source = ManifestSource(str(path))
    assert isinstance(source, Source)
    assert str(path) in source.describe()


def test_json_array_and_wrapped_object(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"id": 1, "file": "a.jpg", "tags": ["x", "y"]}, {"id": 2, "file": "b.jpg"}]))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"generated": "today", "assets": [{"id": "w1", "file": "c.jpg"}]}))

    a = _joined(_collect(ManifestSource(str(array))))
    w = _joined(_collect(ManifestSource(str(wrapped))))

    assert a["id"].tolist() == [1, 2]
    assert a["tags"].iloc[0] == ["x", "y"]
    assert pd.isna(a["tags"].iloc[1])
    assert w.to_dict("records") == [{"id": "w1", "file": "c.jpg"}]


def test_json_chunks_a_whole_document(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"id": f"r{i}", "file": f"{i}.jpg"} for i in range(5)]))
    chunks = _collect(ManifestSource(str(path)), chunk_rows=2)
    assert [len(c.frame) for c in chunks] == [2, 2, 1]
    assert [c.first_row for c in chunks] == [1, 3, 5]


def test_jsonl_round_trip_keeps_json_types_and_big_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"id": 9007199254740993, "file": "a.jpg", "tags": ["x"], "updated_at": "2024-01-01T00:00:00Z"},
        {"id": "007", "file": "b.jpg"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    frame = _joined(_collect(ManifestSource(str(path))))

    assert frame["id"].tolist() == [9007199254740993, "007"]  # no float rounding, no "007" -> 7
    assert frame["updated_at"].iloc[0] == "2024-01-01T00:00:00Z"  # not converted on read
    assert frame["tags"].iloc[0] == ["x"]


def test_ndjson_extension_and_blank_lines_do_not_count_as_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.ndjson"
    path.write_text('{"id": "a", "file": "a.jpg"}\n\n   \n{"id": "b", "file": "b.jpg"}\n')
    chunks = _collect(ManifestSource(str(path)), chunk_rows=10)
    assert _joined(chunks)["id"].tolist() == ["a", "b"]


def test_parquet_round_trip_with_lists_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    frame = pd.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "file": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "tags": [["x", "y"], [], ["z"], ["w"]],
            "updated_at": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"], utc=True),
        }
    )
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=2)

    chunks = _collect(ManifestSource(str(path)), chunk_rows=3)

    assert [c.first_row for c in chunks] == [1, 4]
    out = _joined(chunks)
    assert out["id"].tolist() == ["p1", "p2", "p3", "p4"]
    assert list(out["tags"].iloc[0]) == ["x", "y"]
    assert out["updated_at"].iloc[3] == pd.Timestamp("2024-04-01", tz="UTC")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "json"])
def test_chunking_ten_rows_by_three(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(1, 11)], "file": [f"{i}.jpg" for i in range(1, 11)]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        frame.to_json(path, orient="records")
    else:
        frame.to_parquet(path, index=False)

    chunks = _collect(ManifestSource(str(path)), chunk_rows=3)

    assert [len(c.frame) for c in chunks] == [3, 3, 3, 1]
    assert [c.first_row for c in chunks] == [1, 4, 7, 10]
    for chunk in chunks:
        # row first_row + i of the file is frame row i
        assert chunk.frame["id"].tolist() == [f"r{chunk.first_row + i}" for i in range(len(chunk.frame))]
        assert list(chunk.frame.index) == list(range(len(chunk.frame)))


def test_glob_reads_matches_in_sorted_order_and_restarts_rows(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name, ids in [("b.csv", ["b1", "b2"]), ("a.csv", ["a1"]), ("c.csv", ["c1"])]:
        pd.DataFrame({"id": ids, "file": [f"{i}.jpg" for i in ids]}).to_csv(tmp_path / name, index=False)
    pd.DataFrame({"id": ["ignored"]}).to_json(tmp_path / "other.json")

    source = ManifestSource(str(tmp_path / "*.csv"))
    chunks = _collect(source)

    expected = [str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv")]
    assert source.files() == expected
    assert [c.source for c in chunks] == expected
    assert [c.first_row for c in chunks] == [1, 1, 1]
    assert _joined(chunks)["id"].tolist() == ["a1", "b1", "b2", "c1"]


def test_glob_with_mixed_formats_uses_each_extension(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["c"], "file": ["c.jpg"]}).to_csv(tmp_path / "1.csv", index=False)
    pd.DataFrame({"id": ["j"], "file": ["j.jpg"]}).to_json(tmp_path / "2.jsonl", orient="records", lines=True)
    pd.DataFrame({"id": ["p"], "file": ["p.jpg"]}).to_parquet(tmp_path / "3.parquet", index=False)

    frame = _joined(_collect(ManifestSource(str(tmp_path / "*"))))

    assert frame["id"].tolist() == ["c", "j", "p"]


def test_column_rename(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"Asset ID": ["x"], "Path": ["x.jpg"], "Keep": ["k"]}).to_csv(path, index=False)

    chunk = _collect(ManifestSource(str(path), columns={"Asset ID": "id", "Path": "file", "Missing": "title"}))[0]

    assert list(chunk.frame.columns) == ["id", "file", "Keep"]
    assert chunk.frame.iloc[0].tolist() == ["x", "x.jpg", "k"]


def test_rename_onto_an_existing_column_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pd.DataFrame({"id": ["x"], "asset_id": ["y"], "file": ["f"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"duplicate column.*\bid\b"):
        _collect(ManifestSource(str(path), columns={"asset_id": "id"}))


def test_gzip_csv_is_decompressed(tmp_path: Path) -> None:
    path = tmp_path / "m.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        _frame().to_csv(f, index=False)

    chunks = _collect(ManifestSource(str(path)), chunk_rows=2)

    assert [c.first_row for c in chunks] == [1, 3]
    assert _joined(chunks)["id"].tolist() == ["a1", "a2", "a3"]


def test_gzip_jsonl_and_json_are_decompressed(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "m.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"id": "j1", "file": "a.jpg"}\n{"id": "j2", "file": "b.jpg"}\n')
    with gzip.open(tmp_path / "m.json.gz", "wt", encoding="utf-8") as f:
        f.write('{"assets": [{"id": "k1", "file": "c.jpg"}]}')

    assert _joined(_collect(ManifestSource(str(tmp_path / "m.jsonl.gz"))))["id"].tolist() == ["j1", "j2"]
    assert _joined(_collect(ManifestSource(str(tmp_path / "m.json.gz"))))["id"].tolist() == ["k1"]


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_text('{"id": "x", "file": "x.jpg"}\n')
    with pytest.raises(ConfigError, match="cannot tell the format"):
        _collect(ManifestSource(str(path)))
    assert _joined(_collect(ManifestSource(str(path), format="JSONL")))["id"].tolist() == ["x"]


def test_header_only_and_empty_files_yield_nothing(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("id,file\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]")
    pd.DataFrame({"id": pd.Series([], dtype=str)}).to_parquet(tmp_path / "empty.parquet")
    for name in ("header.csv", "empty.csv", "empty.jsonl", "empty.json", "empty.parquet"):
        assert _collect(ManifestSource(str(tmp_path / name))) == [], name


def test_not_found_names_the_url(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=f"^manifest not found: {missing}$"):
        _collect(ManifestSource(missing))


def test_glob_without_match_names_the_url(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.csv")
    with pytest.raises(ConfigError, match="no manifest matches") as info:
        _collect(ManifestSource(pattern))
    assert pattern in str(info.value)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        _collect(ManifestSource(str(tmp_path)))


def test_unknown_format_lists_accepted_formats() -> None:
    with pytest.raises(ConfigError, match="csv, json, jsonl, parquet"):
        ManifestSource("m.csv", format="xlsx")


def test_unknown_extension_lists_accepted_formats(tmp_path: Path) -> None:
    path = tmp_path / "m.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(ConfigError, match="csv, json, jsonl, parquet") as info:
        _collect(ManifestSource(str(path)))
    assert str(path) in str(info.value)


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuchproto"):
        _collect(ManifestSource("nosuchproto://bucket/m.csv"))


def test_unparsable_csv_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,file\na,a.jpg\nb,b.jpg,extra\n")
    with pytest.raises(ConfigError, match=r"line 3") as info:  # fatal only when asked (default: reject the row)
        _collect(ManifestSource(str(path), on_bad_lines="fail"))
    assert str(path) in str(info.value)


def test_unparsable_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": \n{"id": "d"}\n')
    with pytest.raises(ConfigError, match=r"line 3\b") as info:
        _collect(ManifestSource(str(path), on_bad_lines="fail"), chunk_rows=2)
    assert str(path) in str(info.value)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(ConfigError, match=r"line 2: expected a JSON object"):
        _collect(ManifestSource(str(path), on_bad_lines="fail"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"id": "a"}, ', "line 1"),
        ('{"a": [], "b": []}', "exactly one array"),
        ('"just a string"', "array of objects"),
        ('[{"id": "a"}, 3]', "item 1"),
    ],
)
def test_unparsable_json(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        _collect(ManifestSource(str(path)))
    assert str(path) in str(info.value)


def test_corrupt_parquet_and_gzip(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    for name in ("bad.parquet", "bad.csv.gz"):
        with pytest.raises(ConfigError, match="cannot parse") as info:
            _collect(ManifestSource(str(tmp_path / name)))
        assert name in str(info.value)


def test_chunk_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chunk_rows"):
        _collect(ManifestSource(str(tmp_path / "m.csv")), chunk_rows=0)


def test_describe_and_errors_never_show_option_values(tmp_path: Path) -> None:
    source = ManifestSource(
        "https://user:hunter2@example.com/m.csv?X-Amz-Signature=topsecret",
        options={"headers": {"Authorization": "Bearer sekret-token"}},
        columns={"Asset": "id"},
    )
    line = source.describe()
    for secret in ("hunter2", "topsecret", "sekret-token"):
        assert secret not in line
    assert "example.com/m.csv" in line and "headers" in line and "Asset->id" in line
    assert display_url("s3://bucket/m.csv?versionId=3") == "s3://bucket/m.csv?versionId=3"

    bad = ManifestSource(str(tmp_path / "m.csv"), options={"password": "sekret-value"})
    with pytest.raises(ConfigError, match="manifest not found") as info:
        _collect(bad)
    assert "sekret-value" not in str(info.value)
    assert "sekret-value" not in bad.describe() and "password" in bad.describe()


# --- S3 through moto's server mode, over real HTTP ---------------------------------------------


# ``s3_endpoint`` (moto's ThreadedMotoServer on a free loopback port) comes from conftest.py.


def _s3_options(endpoint: str) -> dict[str, object]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint: str) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **_s3_options(s3_endpoint))
    # mkdir would send LocationConstraint=us-east-1, which S3 (and moto) refuse for that region
    fs.call_s3("create_bucket", Bucket="manifests-bucket")
    fs.pipe(
        {
            "manifests-bucket/manifests/b.csv": b"id,file\nb1,s3://assets/b1.jpg\nb2,s3://assets/b2.jpg\n",
            "manifests-bucket/manifests/a.csv": b"id,file\na1,s3://assets/a1.jpg\n",
            "manifests-bucket/manifests/notes.txt": b"not a manifest",
        }
    )
    return "manifests-bucket"


def test_s3_glob_through_moto_server(s3_endpoint: str, s3_bucket: str) -> None:
    source = ManifestSource(f"s3://{s3_bucket}/manifests/*.csv", options=_s3_options(s3_endpoint))

    chunks = _collect(source)

    assert [c.source for c in chunks] == [
        f"s3://{s3_bucket}/manifests/a.csv",
        f"s3://{s3_bucket}/manifests/b.csv",
    ]
    assert [c.first_row for c in chunks] == [1, 1]
    assert _joined(chunks)["id"].tolist() == ["a1", "b1", "b2"]
    assert "testing" not in source.describe()


def test_s3_single_file_and_missing_key(s3_endpoint: str, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/manifests/b.csv"
    chunks = _collect(ManifestSource(url, options=_s3_options(s3_endpoint)), chunk_rows=1)
    assert [(c.source, c.first_row) for c in chunks] == [(url, 1), (url, 2)]

    missing = f"s3://{s3_bucket}/manifests/zzz.csv"
    with pytest.raises(ConfigError, match=f"^manifest not found: {missing}$"):
        _collect(ManifestSource(missing, options=_s3_options(s3_endpoint)))
    assert os.environ.get("AWS_ACCESS_KEY_ID") == "testing"


def test_s3_manifest_replaced_between_runs_is_read_fresh(s3_endpoint: str, s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **_s3_options(s3_endpoint))
    url = f"s3://{s3_bucket}/replaced/*.csv"
    fs.pipe_file(f"{s3_bucket}/replaced/m.csv", b"id,file\nold,old.jpg\n")
    first = _joined(_collect(ManifestSource(url, options=_s3_options(s3_endpoint))))

    fs.pipe_file(f"{s3_bucket}/replaced/m.csv", b"id,file\nnew1,new1.jpg\nnew2,new2.jpg\n")
    second = _joined(_collect(ManifestSource(url, options=_s3_options(s3_endpoint))))

    assert first["id"].tolist() == ["old"]
    assert second["id"].tolist() == ["new1", "new2"]


def test_an_http_manifest_missing_or_on_a_host_that_refuses_says_which(tmp_path: Path) -> None:
    """Over real sockets: a served manifest is read, a 404 is "not found", and a host that refuses
    the connection is reported as unreachable (fsspec's http filesystem calls both "not found")."""
    import functools
    import socket
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "m.csv").write_text("id,title\na1,One\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert _joined(_collect(ManifestSource(f"{base}/m.csv")))["id"].tolist() == ["a1"]
        with pytest.raises(ConfigError, match=f"^manifest not found: {base}/nope.csv$"):
            _collect(ManifestSource(f"{base}/nope.csv"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(ConfigError, match=rf"^cannot reach the host of manifest http://127.0.0.1:{closed}/m.csv "
                                          r"\(connection refused\)$"):
        _collect(ManifestSource(f"http://127.0.0.1:{closed}/m.csv"))
