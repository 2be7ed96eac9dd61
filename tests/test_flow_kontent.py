"""End to end: the real sync_assets flow (ephemeral Prefect) into the Kontent.ai simulator over a
real socket, with files on local disk and on S3 (moto server mode over HTTP, through s3fs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import s3fs

from connectors.core.job import parse_job
from tests import kit

pytestmark = pytest.mark.usefixtures("prefect_harness")

S3_OPTIONS_KEYS = ("key", "secret")


def s3_options(endpoint: str, *, literal: bool = False) -> dict:
    if literal:  # for s3fs in the test itself
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    return {"key": "env:AWS_ACCESS_KEY_ID", "secret": "env:AWS_SECRET_ACCESS_KEY",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


FAST = {"requests_per_second": 100, "requests_per_minute": 6000}


def fast_job(root: str, tmp_path: Path, n: int, **overrides: object) -> tuple[list[dict], dict]:
    """n rows on disk and a job whose limits (both sides) are raised so tests run quickly."""
    kit.set_limits(root, 200, 12000)
    rows = kit.make_rows(tmp_path / "files", n)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), root, tmp_path / "state",
                       settings=dict(FAST, **overrides.pop("settings", {})), **overrides)
    return rows, job


def run(job_data: dict) -> dict:
    from flows.sync import sync_assets

    return sync_assets(parse_job(job_data, where="test"))


def test_200_records_local_and_s3_then_rerun_and_title_change(kontent: str, s3_endpoint: str, tmp_path: Path) -> None:
    kit.set_limits(kontent, 200, 12000)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(s3_endpoint, literal=True))
    fs.call_s3("create_bucket", Bucket="assets-e2e")  # mkdir sends a LocationConstraint moto refuses
    local_rows = kit.make_rows(tmp_path / "local", 100, prefix="L")
    s3_rows = kit.make_rows(tmp_path / "to-s3", 100, prefix="S")
    md5 = {r["id"]: kit.md5_file(r["file"]) for r in local_rows + s3_rows}
    for r in s3_rows:
        key = f"assets-e2e/files/{Path(r['file']).name}"
        fs.put_file(r["file"], key)
        r["file"] = f"s3://{key}"
    rows = local_rows + s3_rows
    manifest = kit.write_csv(tmp_path / "manifest.csv", rows)
    fs.put_file(str(manifest), "assets-e2e/manifests/manifest.csv")
    job = kit.job_dict("s3://assets-e2e/manifests/*.csv", kontent, tmp_path / "state",
                       source={"options": s3_options(s3_endpoint)}, batch_size=25, concurrency=3,
                       settings=FAST)

    first = run(job)
    assert (first["loaded"], first["rejected"], first["failed"], first["exit_code"]) == (200, 0, 0, 0)
    assets = kit.list_assets(kontent)
    assert sorted(a["external_id"] for a in assets) == sorted(md5)
    by_id = {a["external_id"]: a for a in assets}
    for r in rows:
        asset = by_id[r["id"]]
        assert asset["title"] == r["title"]
        assert asset["descriptions"][0]["description"] == r["description"]
        assert kit.md5_url(asset["url"]) == md5[r["id"]], r["id"]
    after_first = kit.stats(kontent)
    assert after_first["uploads"] == 200

    second = run(job)
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (0, 200, 0)
    assert kit.stats(kontent)["by_route"] == after_first["by_route"]  # nothing sent at all

    rows[7]["title"] = "A better title"
    kit.write_csv(manifest, rows)
    fs.put_file(str(manifest), "assets-e2e/manifests/manifest.csv")
    third = run(job)
    assert (third["loaded"], third["unchanged"]) == (1, 199)
    s = kit.stats(kontent)
    assert s["uploads"] == 200  # the file was not sent again
    assert s["by_route"]["upsert"] == after_first["by_route"]["upsert"] + 1
    assert {a["external_id"]: a for a in kit.list_assets(kontent)}[rows[7]["id"]]["title"] == "A better title"
    assert s["assets"] == 200


def test_changed_file_is_uploaded_again_and_replaces_the_asset_file(kontent: str, tmp_path: Path) -> None:
    rows, job = fast_job(kontent, tmp_path, 3)
    assert run(job)["loaded"] == 3
    Path(rows[1]["file"]).write_bytes(b"new content, longer than before" * 7)
    again = run(job)
    assert (again["loaded"], again["unchanged"]) == (1, 2)
    asset = {a["external_id"]: a for a in kit.list_assets(kontent)}[rows[1]["id"]]
    assert kit.md5_url(asset["url"]) == kit.md5_file(rows[1]["file"])
    assert kit.stats(kontent)["assets"] == 3


def test_bad_rows_are_rejected_with_reasons_and_the_rest_loads(kontent: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    kit.set_limits(kontent, 200, 12000)
    good = kit.make_rows(tmp_path / "files", 4)
    big = tmp_path / "files" / "huge.bin"
    with big.open("wb") as f:
        f.truncate(101 * 1024 * 1024)  # sparse: 101 MB on paper, nothing on disk
    rows = good + [
        {"id": "", "title": "no id", "file": good[0]["file"]},
        {"id": "NOFILE", "title": "no file", "file": ""},
        {"id": "GONE", "title": "missing file", "file": str(tmp_path / "files" / "nope.png")},
        {"id": good[1]["id"], "title": "duplicate", "file": good[1]["file"]},
        {"id": "BIG", "title": "too big", "file": str(big)},
        {"id": "BADLANG", "title": "bad language", "file": good[2]["file"], "language": "en US!"},
        {"id": "OTHERLANG", "title": "unknown language", "file": good[3]["file"], "language": "fr-FR"},
    ]
    manifest = kit.write_csv(tmp_path / "m.csv", rows)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(manifest), kontent, tmp_path / "state",
        settings={"languages": ["default", "en-US"], **FAST}))

    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 1, result.output
    assert sorted(a["external_id"] for a in kit.list_assets(kontent)) == sorted(r["id"] for r in good)

    rejects_file = tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv"
    with rejects_file.open() as f:
        rejects = list(csv.DictReader(f))
    got = {(r["row"], r["id"], r["field"]): r["reason"] for r in rejects}
    assert got[("5", "", "id")] == "missing id"
    assert got[("6", "NOFILE", "file")] == "missing file"
    assert got[("7", "GONE", "file")].startswith("file not found")
    assert got[("8", good[1]["id"], "id")].startswith(f"duplicate id '{good[1]['id']}' (first seen at")
    assert "101.0 MB" in got[("9", "BIG", "file")] and "at most 100 MB" in got[("9", "BIG", "file")]
    assert "invalid language" in got[("10", "BADLANG", "language")]
    assert "not one of the environment's languages" in got[("11", "OTHERLANG", "language")]
    assert len(rejects) == 7
    assert all(r["source"] == str(manifest) for r in rejects)
    assert '"title": "too big"' in next(r["record"] for r in rejects if r["id"] == "BIG").replace('":"', '": "')
    assert kit.stats(kontent)["bytes_uploaded"] < 1024 * 1024  # the 101 MB file was never sent


def test_429_with_retry_after_is_honoured(kontent: str, tmp_path: Path) -> None:
    # The vendor is stricter than the client believes: 429s happen and are waited out.
    kit.set_limits(kontent, 3, 1000)
    rows = kit.make_rows(tmp_path / "files", 8)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state",
                       settings={"requests_per_second": 50, "requests_per_minute": 3000})
    summary = run(job)
    assert (summary["loaded"], summary["failed"]) == (8, 0)
    s = kit.stats(kontent)
    assert s["throttled"] > 0
    assert s["assets"] == 8 and s["uploads"] == 8


def test_transient_5xx_is_retried_and_auth_failure_stops_with_exit_2(kontent: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from typer.testing import CliRunner

    from flows.cli import app

    httpx.post(f"{kontent}/_sandbox/faults", json={"status": 503, "count": 2, "route": "upsert"}).raise_for_status()
    rows, data = fast_job(kontent, tmp_path, 3)
    summary = run(data)
    assert (summary["loaded"], summary["failed"]) == (3, 0)
    assert kit.stats(kontent)["assets"] == 3

    monkeypatch.setenv("KONTENT_API_KEY", "wrong-key-4242")
    data["name"] = "e2e-auth"
    job = kit.write_job(tmp_path / "job.yaml", data)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    assert "refused (401)" in result.output
    assert "wrong-key-4242" not in result.output


def test_default_limiter_300_assets_see_no_429(kontent: str, tmp_path: Path) -> None:
    """The documented limits (10/s, 400/min) on both sides: 600 requests, zero 429."""
    rows = kit.make_rows(tmp_path / "files", 300)
    job = kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state",
                       concurrency=3)
    summary = run(job)
    assert summary["loaded"] == 300
    s = kit.stats(kontent)
    assert s["throttled"] == 0
    assert s["accepted"] == 600


def test_credentials_from_a_prefect_secret_block(kontent: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    Secret(value=kit.KEY).save("kontent-e2e-key", overwrite=True)
    monkeypatch.delenv("KONTENT_API_KEY")
    rows, job = fast_job(kontent, tmp_path, 2)
    job["destination"]["credentials"] = {"api_key": "secret:kontent-e2e-key"}
    assert run(job)["loaded"] == 2
    job["destination"]["credentials"] = {"api_key": "secret:no-such-block"}
    from connectors.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no-such-block"):
        run(job)


def test_a_batch_that_keeps_failing_is_retried_by_prefect_and_then_loads(kontent: str, tmp_path: Path) -> None:
    """Tier 2 of the retry policy: the HTTP layer gives up (5 attempts per request, 3 rows in a
    row), the batch task raises TransientError, Prefect retries the batch, and it loads."""
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults",
               json={"status": 503, "count": 15, "retry_after": 0, "route": "upload"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 4, retries=1)
    summary = run(job)
    assert (summary["loaded"], summary["failed"]) == (4, 0)
    s = kit.stats(kontent)
    assert s["by_route"]["upload"] == 15 + 4  # 3 rows x 5 attempts, then one upload per row
    assert s["assets"] == 4


def test_a_4xx_is_not_retried_and_rejects_only_that_row(kontent: str, tmp_path: Path) -> None:
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults", json={"status": 400, "count": 1, "route": "upsert"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 3)
    summary = run(job)
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (2, 1, 1)
    assert kit.stats(kontent)["by_route"]["upsert"] == 3  # the refused one was not resent
    rejects = (tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "rejects.csv").read_text()
    assert "Kontent 400" in rejects and rows[0]["id"] in rejects


def test_a_vendor_that_stays_down_stops_the_run_and_leaves_the_rest_pending(kontent: str, tmp_path: Path) -> None:
    import httpx

    httpx.post(f"{kontent}/_sandbox/faults",
               json={"status": 503, "count": 1000, "retry_after": 0, "route": "upload"}).raise_for_status()
    rows, job = fast_job(kontent, tmp_path, 9, batch_size=3, concurrency=1, retries=0)
    summary = run(job)
    assert (summary["loaded"], summary["failed"], summary["pending"], summary["exit_code"]) == (0, 3, 6, 1)
    assert "looks unavailable" in summary["stopped"]
    assert kit.stats(kontent)["by_route"]["upload"] == 3 * 5  # one batch tried, then the run stopped

    httpx.post(f"{kontent}/_sandbox/reset").raise_for_status()  # the vendor is back
    kit.set_limits(kontent, 200, 12000)
    again = run(job)
    assert (again["loaded"], again["pending"], again["exit_code"]) == (9, 0, 0)
