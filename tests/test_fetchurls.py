"""FetchableURLs: http(s) passes through, s3:// is presigned, local files are staged once and presigned.

S3 is moto in server mode over real HTTP (``s3_endpoint`` in conftest.py); every presigned URL is
downloaded with httpx and compared byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import pytest
import s3fs

from assetferry.connectors.core.errors import ConfigError, RejectedError
from assetferry.connectors.core.fetchurls import (
    LOCAL_NEEDS_STAGING,
    MAX_EXPIRES_SECONDS,
    FetchableURLs,
    FetchSettings,
)
from assetferry.connectors.core.files import FileStore

SRC = "fetchurls-src"
STAGE = "fetchurls-stage"  # versioned: counting versions proves how many times a key was written


def s3_options(endpoint: str) -> dict[str, object]:
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(s3_endpoint))
    for bucket in (SRC, STAGE):  # mkdir would send a LocationConstraint moto refuses for us-east-1
        fs.call_s3("create_bucket", Bucket=bucket)
    fs.call_s3("put_bucket_versioning", Bucket=STAGE, VersioningConfiguration={"Status": "Enabled"})
    return fs


@pytest.fixture
def prefix() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def versions(fs: s3fs.S3FileSystem, prefix: str) -> list[dict]:
    listing = fs.call_s3("list_object_versions", Bucket=STAGE, Prefix=prefix)
    return listing.get("Versions", [])


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- no I/O: check and describe ---------------------------------------------------------------


FILES = pd.Series(["https://cdn.example.org/a.png", "s3://b/k/a.png", "/data/a.png", "file:///data/b.png",
                   "gs://b/c.png", "simplecache::s3://b/k", None, "  ", "HTTP://EXAMPLE.ORG/x"],
                  index=[10, 11, 12, 13, 14, 15, 16, 17, 18])


def test_check_without_staging_gives_reasons_per_row_and_no_io() -> None:
    # An endpoint nobody listens on: check and describe must not touch it.
    fetch = FetchableURLs(FetchSettings(), {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})

    reasons = fetch.check(FILES)

    assert list(reasons.index) == list(FILES.index)
    assert reasons.isna().tolist() == [True, True, False, False, False, False, False, False, True]
    assert reasons[12] == reasons[13] == LOCAL_NEEDS_STAGING
    assert reasons[14].startswith("gs:// files cannot be fetched by the vendor")
    assert reasons[15].startswith("simplecache::s3:// files cannot be fetched")
    assert reasons[16] == reasons[17] == "no file given"
    # the row-wise paths agree with the vectorised one
    for file, reason in zip(FILES, reasons):
        if pd.isna(reason):
            continue
        assert fetch.describe(file) == f"rejected: {reason}"
        with pytest.raises(RejectedError) as caught:
            fetch.url_for(file)
        assert (caught.value.reason, caught.value.field) == (reason, "file")


def test_check_with_staging_accepts_local_files() -> None:
    fetch = FetchableURLs(FetchSettings(staging="s3://stage/pre/"))
    reasons = fetch.check(FILES)
    assert reasons.isna().tolist() == [True, True, True, True, False, False, False, False, True]


def test_describe_says_what_url_for_would_do() -> None:
    fetch = FetchableURLs(FetchSettings(staging="s3://stage/pre/"))
    assert fetch.describe("https://cdn.example.org/a.png") == "passed through"
    assert fetch.describe("s3://b/k/a.png") == "presigned s3://b/k/a.png (7 days)"
    assert fetch.describe("/data/a.png", "ab12") == \
        "staged to s3://stage/pre/ab12/a.png then presigned (7 days)"
    assert fetch.describe("file:///data/a.png") == \
        "staged to s3://stage/pre/<fingerprint>/a.png then presigned (7 days)"
    public = FetchableURLs(FetchSettings(staging="/srv/www", public_base_url="https://files.example.org/x/"))
    assert public.describe("/data/a b.png", "ab12") == \
        "staged to /srv/www/ab12/a b.png, served as https://files.example.org/x/ab12/a%20b.png"


@pytest.mark.parametrize("settings, message", [
    ({"expires_seconds": MAX_EXPIRES_SECONDS + 1}, "from 1 to 604800"),
    ({"expires_seconds": 0}, "from 1 to 604800"),
    ({"expires_seconds": 3600.0}, "whole number"),
    ({"staging": "gs://bucket/stage/"}, "cannot be presigned: set destination.settings.public_base_url"),
    ({"staging": "https://files.example.org/"}, "must be a writable location"),
    ({"staging": "/srv/www", "public_base_url": "ftp://x/"}, "public_base_url must be an http"),
])
def test_unusable_settings_are_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FetchSettings(**settings)


# --- pass through and presign -----------------------------------------------------------------


def test_http_passes_through_unchanged() -> None:
    fetch = FetchableURLs(FetchSettings())
    url = "https://cdn.example.org/a%20b.png?v=2"
    assert fetch.url_for(url) == url


def test_s3_file_is_presigned_and_downloads_identical_bytes(s3_endpoint: str, s3: s3fs.S3FileSystem,
                                                            prefix: str) -> None:
    data = os.urandom(3000)
    s3.pipe_file(f"{SRC}/{prefix}/photo one.jpg", data)
    fetch = FetchableURLs(FetchSettings(), s3_options(s3_endpoint))

    url = fetch.url_for(f"s3://{SRC}/{prefix}/photo one.jpg")

    params = query(url)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, not SigV2's Expires=
    assert params["X-Amz-Expires"] == str(MAX_EXPIRES_SECONDS)
    assert "X-Amz-Signature" in params
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data


def test_expiry_setting_is_in_the_url(s3_endpoint: str, s3: s3fs.S3FileSystem, prefix: str) -> None:
    s3.pipe_file(f"{SRC}/{prefix}/a.png", b"png")
    fetch = FetchableURLs(FetchSettings(expires_seconds=3600), s3_options(s3_endpoint))

    assert query(fetch.url_for(f"s3://{SRC}/{prefix}/a.png"))["X-Amz-Expires"] == "3600"
    assert fetch.describe(f"s3://{SRC}/{prefix}/a.png") == f"presigned s3://{SRC}/{prefix}/a.png (1 hour)"


def test_missing_s3_object_is_rejected_not_presigned(s3_endpoint: str, s3: s3fs.S3FileSystem,
                                                     prefix: str) -> None:
    fetch = FetchableURLs(FetchSettings(), s3_options(s3_endpoint))
    with pytest.raises(RejectedError) as caught:
        fetch.url_for(f"s3://{SRC}/{prefix}/nope.png")
    assert (caught.value.reason, caught.value.field) == ("file not found", "file")


# --- staging ----------------------------------------------------------------------------------


def test_local_file_is_staged_once_then_presigned(s3_endpoint: str, s3: s3fs.S3FileSystem, prefix: str,
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "cover.png"
    data = os.urandom(5000)
    path.write_bytes(data)
    # staging's storage_options default to the job's file options (here: the S3 ones)
    fetch = FetchableURLs(FetchSettings(staging=f"s3://{STAGE}/{prefix}/"), s3_options(s3_endpoint))
    fingerprint = FileStore().stat(str(path)).fingerprint

    first = fetch.url_for(str(path))
    second = fetch.url_for(str(path))  # a re-run: same unchanged file
    third = FetchableURLs(fetch.settings, s3_options(s3_endpoint)).url_for(f"file://{path}", fingerprint)

    key = f"{prefix}/{fingerprint}/cover.png"
    assert [v["Key"] for v in versions(s3, prefix)] == [key]  # written exactly once
    assert s3.info(f"{STAGE}/{key}")["ContentType"] == "image/png"  # the vendor sees the right type
    for url in (first, second, third):
        assert urlsplit(url).path == f"/{STAGE}/{key}"
        assert httpx.get(url).content == data
    assert fetch.describe(str(path), fingerprint) == \
        f"staged to s3://{STAGE}/{key} then presigned (7 days)"
    # this module never logs a presigned URL (nor anything else)
    ours = [r for r in caplog.records if r.name.startswith("assetferry")]
    assert not any("X-Amz-Signature" in r.getMessage() for r in ours)

    # a changed file gets a new key (the old copy stays for URLs already handed out)
    changed = os.urandom(6000)
    path.write_bytes(changed)
    url = fetch.url_for(str(path))
    assert len(versions(s3, prefix)) == 2
    assert httpx.get(url).content == changed


def test_partial_staged_copy_is_replaced(s3_endpoint: str, s3: s3fs.S3FileSystem, prefix: str,
                                         tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    fetch = FetchableURLs(FetchSettings(staging=f"s3://{STAGE}/{prefix}"), s3_options(s3_endpoint))
    fingerprint = FileStore().stat(str(path)).fingerprint
    s3.pipe_file(f"{STAGE}/{prefix}/{fingerprint}/a.bin", b"x" * 10)  # an interrupted copy

    url = fetch.url_for(str(path), fingerprint)

    assert len(versions(s3, prefix)) == 2
    assert httpx.get(url).content == b"x" * 1000


def test_local_without_staging_is_rejected_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"png")
    fetch = FetchableURLs(FetchSettings(), {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})

    assert fetch.check(pd.Series([str(path)])).tolist() == [LOCAL_NEEDS_STAGING]
    with pytest.raises(RejectedError) as caught:
        fetch.url_for(str(path))
    assert (caught.value.reason, caught.value.field) == (LOCAL_NEEDS_STAGING, "file")


def test_missing_or_directory_local_file_is_rejected(s3_endpoint: str, s3: s3fs.S3FileSystem, prefix: str,
                                                     tmp_path: Path) -> None:
    fetch = FetchableURLs(FetchSettings(staging=f"s3://{STAGE}/{prefix}/"), s3_options(s3_endpoint))
    for file, reason in ((str(tmp_path / "gone.png"), "file not found"),
                         (str(tmp_path), "is a directory, not a file")):
        with pytest.raises(RejectedError) as caught:
            fetch.url_for(file)
        assert (caught.value.reason, caught.value.field) == (reason, "file")
    assert versions(s3, prefix) == []


def test_missing_staging_bucket_is_a_config_error(s3_endpoint: str, s3: s3fs.S3FileSystem,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"png")
    fetch = FetchableURLs(FetchSettings(staging="s3://fetchurls-no-such-bucket/x/",
                                        storage_options=s3_options(s3_endpoint)))
    with pytest.raises(ConfigError, match="cannot write to staging s3://fetchurls-no-such-bucket/x"):
        fetch.url_for(str(path))


def test_large_file_is_streamed_in_parts(s3_endpoint: str, s3: s3fs.S3FileSystem, prefix: str,
                                         tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(20):
            block = os.urandom(1_000_000)
            digest.update(block)
            out.write(block)
    # staging options of its own; the (local) source needs none
    fetch = FetchableURLs(FetchSettings(staging=f"s3://{STAGE}/{prefix}/",
                                        storage_options=s3_options(s3_endpoint)))

    url = fetch.url_for(str(path))

    (version,) = versions(s3, prefix)
    assert version["Size"] == 20_000_000
    assert version["ETag"].strip('"').endswith("-3")  # multipart: 8 MiB parts, never the whole file
    downloaded = hashlib.sha256()
    with httpx.stream("GET", url) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            downloaded.update(chunk)
    assert downloaded.hexdigest() == digest.hexdigest()


def test_non_s3_staging_maps_through_public_base_url(tmp_path: Path) -> None:
    path = tmp_path / "src" / "a b.png"
    path.parent.mkdir()
    path.write_bytes(b"png bytes")
    www = tmp_path / "www"
    fetch = FetchableURLs(FetchSettings(staging=f"file://{www}/",
                                        public_base_url="https://files.example.org/x/"))
    fingerprint = FileStore().stat(str(path)).fingerprint

    url = fetch.url_for(str(path))
    staged = www / fingerprint / "a b.png"
    before = staged.stat().st_mtime_ns
    again = fetch.url_for(str(path))

    assert url == again == f"https://files.example.org/x/{fingerprint}/a%20b.png"
    assert staged.read_bytes() == b"png bytes"
    assert staged.stat().st_mtime_ns == before  # not copied again
