"""End to end: the real sync_assets flow into the Media Pocket simulator over real sockets. The
simulator really downloads every media URL it is given: presigned S3 URLs (moto server), plain
http(s) URLs (a static file server) and local files staged to S3 or to a served folder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import s3fs
from starlette.staticfiles import StaticFiles

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.job import parse_job
from assetferry.sandbox import mediapocket as sim
from assetferry.sandbox.server import running
from tests import kit

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "mediapocket-e2e"
KEY = sim.DEMO_API_KEY
PROJECT = sim.DEMO_PROJECT_ID
S3_REFS = {"key": "env:AWS_ACCESS_KEY_ID", "secret": "env:AWS_SECRET_ACCESS_KEY"}


def s3_options(endpoint: str, refs: dict[str, str] | None = None) -> dict[str, Any]:
    creds = refs if refs is not None else {"key": "testing", "secret": "testing"}
    return {**creds, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(s3_endpoint))
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)  # mkdir sends a LocationConstraint moto refuses
    return fs


@pytest.fixture(scope="module")
def servers(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(simulator root, static file server root, the folder it serves). The simulator resolves
    ``s3: {s3_key}`` from the e2e bucket (as Media Pocket's S3 integration would)."""
    www = tmp_path_factory.mktemp("www")
    with ExitStack() as stack:
        root = stack.enter_context(running(sim.create_app(s3_base_url=f"{s3_endpoint}/{BUCKET}")))
        files = stack.enter_context(running(StaticFiles(directory=str(www))))
        yield root, files, www


@pytest.fixture
def mp(servers: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, Path]:
    httpx.post(f"{servers[0]}/_sandbox/reset").raise_for_status()
    monkeypatch.setenv("MEDIAPOCKET_API_KEY", KEY)
    return servers


# -- helpers -------------------------------------------------------------------------------------
def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def records(root: str) -> dict[str, dict[str, Any]]:
    """external id -> the simulator's record; fails if any external id is held twice."""
    got = httpx.get(f"{root}/_sandbox/records").json()["records"]
    counts = Counter(r["external_id"] for r in got)
    assert all(n == 1 for n in counts.values()), f"duplicates: {counts}"
    return {r["external_id"]: r for r in got}


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def routes(root: str) -> dict[str, int]:
    return {k: v for k, v in stats(root)["by_route"].items() if v}


def local_rows(folder: Path, n: int, prefix: str = "L") -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows, data = [], {}
    for i in range(n):
        rid = f"{prefix}-{i}"
        data[rid] = f"{rid} bytes ".encode() * (20 + i)
        (folder / f"{rid.lower()}.png").write_bytes(data[rid])
        rows.append({"id": rid, "title": f"Title {rid}", "description": f"About {rid}", "category": "Product",
                     "tags": "red|catalog", "file": str(folder / f"{rid.lower()}.png")})
    return rows, data


def job(root: str, tmp_path: Path, rows: list[dict[str, Any]], *, source: dict[str, Any] | None = None,
        batch_size: int = 4, concurrency: int = 2, **settings: Any) -> dict[str, Any]:
    """A job over ``rows`` (written as the manifest); ``settings`` are the destination's."""
    manifest = kit.write_csv(tmp_path / "manifest.csv", rows)
    return {"name": "mp-e2e", "source": {"url": str(manifest), **(source or {})},
            "destination": {"vendor": "mediapocket", "url": f"{root}{sim.BASE_PATH}",
                            "credentials": {"api_key": "env:MEDIAPOCKET_API_KEY"},
                            "settings": {"project_id": PROJECT, "requests_per_second": 200, **settings}},
            "state": str(tmp_path / "state"), "batch_size": batch_size, "concurrency": concurrency,
            "retry_delay_seconds": 0}


def served(files: str, www: Path, tmp_path: Path) -> dict[str, Any]:
    """Settings that stage local files into the static server's folder (non-S3 staging)."""
    return {"staging": f"file://{www}/{tmp_path.name}/", "public_base_url": f"{files}/{tmp_path.name}"}


def run(data: dict[str, Any]) -> dict[str, Any]:
    from assetferry.flows.sync import sync_assets

    return sync_assets(parse_job(data, where="test"))


def rejects(summary: dict[str, Any]) -> dict[str, dict[str, str]]:
    frame = pd.read_csv(summary["rejects_file"], dtype=str, keep_default_na=False)
    return {r["id"]: r for r in frame.to_dict("records")}


def ledger(tmp_path: Path) -> Any:
    from assetferry.connectors.core.ledger import Ledger

    return Ledger(str(tmp_path / "state" / "mp-e2e" / "mediapocket-default")).load()


def state_text(tmp_path: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in (tmp_path / "state").rglob("*")
                     if p.is_file())


# -- tests ---------------------------------------------------------------------------------------
def test_s3_and_staged_local_files_arrive_once_then_rerun_sends_nothing_and_changes_go_in_place(
        mp: tuple[str, str, Path], s3: s3fs.S3FileSystem, s3_endpoint: str, tmp_path: Path) -> None:
    root, _, _ = mp
    httpx.post(f"{root}/_sandbox/projects", json={"id": "OTHERproject"}).raise_for_status()
    rows, data = local_rows(tmp_path / "local", 3)  # staged to S3, then presigned
    rows[1]["parent"] = "OTHERproject"
    for i in range(3):  # already on S3: presigned
        rid = f"S-{i}"
        data[rid] = f"{rid} on s3 ".encode() * (30 + i)
        s3.pipe_file(f"{BUCKET}/{tmp_path.name}/src/{rid}.png", data[rid])
        rows.append({"id": rid, "title": f"Title {rid}", "category": "Photo", "tags": "",
                     "file": f"s3://{BUCKET}/{tmp_path.name}/src/{rid}.png"})
    data_job = job(root, tmp_path, rows, source={"options": s3_options(s3_endpoint, S3_REFS),
                                                 "allowed_roots": [str(tmp_path), f"s3://{BUCKET}/{tmp_path.name}/src/"]},
                   staging=f"s3://{BUCKET}/{tmp_path.name}/stage/")

    first = run(data_job)
    assert (first["loaded"], first["rejected"], first["failed"], first["exit_code"]) == (6, 0, 0, 0), first
    got = records(root)
    assert sorted(got) == sorted(data)
    for r in rows:
        rec = got[r["id"]]
        assert rec["media"]["md5"] == md5(data[r["id"]]), r["id"]  # the bytes the vendor fetched
        assert rec["media"]["filename"] == Path(r["file"]).name
        assert (rec["title"], rec["category"]) == (r["title"], r["category"].lower())
        assert rec["tags"] == [t for t in r["tags"].split("|") if t]
        assert rec["project_id"] == (r.get("parent") or PROJECT)
    assert got["L-0"]["description"] == "About L-0" and got["S-0"]["description"] is None
    assert f"/{tmp_path.name}/stage/" in got["L-1"]["media"]["source"]["file_url"]  # the staged copy
    assert got["S-1"]["media"]["source"]["file_url"].endswith(f"/{tmp_path.name}/src/S-1.png")
    assert routes(root) == {"create": 6}  # one request per asset, nothing else
    assert "X-Amz-Signature" not in state_text(tmp_path)  # presigned URLs never reach the ledger

    requests_before = stats(root)["requests"]
    second = run(data_job)
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (0, 6, 0)
    assert stats(root)["requests"] == requests_before  # a rerun sends nothing at all

    rows[3]["title"] = "A better title"  # S-0: metadata only
    rows[4]["category"] = "PHOTO"  # S-1: the vendor stores categories lower-cased: unchanged
    data["L-2"] = b"a new version of the file " * 11  # L-2: the file only
    Path(rows[2]["file"]).write_bytes(data["L-2"])
    kit.write_csv(tmp_path / "manifest.csv", rows)
    third = run(data_job)
    assert (third["loaded"], third["unchanged"], third["exit_code"]) == (2, 4, 0)
    assert routes(root) == {"create": 6, "update": 1, "add_media": 1}  # in place, never a new asset
    got = records(root)
    assert len(got) == 6
    assert got["S-0"]["title"] == "A better title" and got["S-0"]["media"]["md5"] == md5(data["S-0"])
    assert got["L-2"]["media"]["md5"] == md5(data["L-2"]) and got["L-2"]["title"] == "Title L-2"


def test_http_files_pass_through_unchanged(mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, www = mp
    rows, data = [], {}
    for i in range(3):
        rid = f"H-{i}"
        data[rid] = f"{rid} over http ".encode() * (40 + i)
        (www / f"{tmp_path.name}-{rid}.jpg").write_bytes(data[rid])
        rows.append({"id": rid, "title": f"Title {rid}", "file": f"{files}/{tmp_path.name}-{rid}.jpg?v=1"})
    data_job = job(root, tmp_path, rows, source={"allowed_hosts": ["127.0.0.1"]})  # no staging needed: nothing local
    assert run(data_job)["loaded"] == 3
    got = records(root)
    for r in rows:
        assert got[r["id"]]["media"]["md5"] == md5(data[r["id"]])
        assert got[r["id"]]["media"]["source"]["file_url"] == r["file"].split("?")[0]  # the very URL
    assert run(data_job)["unchanged"] == 3 and routes(root) == {"create": 3}


def test_files_in_the_configured_bucket_are_sent_as_s3_keys(mp: tuple[str, str, Path], s3: s3fs.S3FileSystem,
                                                           s3_endpoint: str, tmp_path: Path) -> None:
    root, _, _ = mp
    keys = [f"{tmp_path.name}/keyed/k{i}.png" for i in range(2)]
    data = {}
    for i, key in enumerate(keys):
        data[f"K-{i}"] = f"keyed {i} ".encode() * 25
        s3.pipe_file(f"{BUCKET}/{key}", data[f"K-{i}"])
        s3.call_s3("put_object_acl", Bucket=BUCKET, Key=key, ACL="public-read")  # Media Pocket's read access
    rows = [{"id": f"K-{i}", "title": f"K{i}", "file": f"s3://{BUCKET}/{key}"} for i, key in enumerate(keys)]
    data_job = job(root, tmp_path, rows, source={"options": s3_options(s3_endpoint, S3_REFS),
                                                 "allowed_roots": [f"s3://{BUCKET}/{tmp_path.name}/keyed/"]},
                   s3_bucket=BUCKET)

    assert run(data_job)["loaded"] == 2
    got = records(root)
    for i, key in enumerate(keys):
        assert got[f"K-{i}"]["media"]["source"] == {"s3_key": key}
        assert got[f"K-{i}"]["media"]["md5"] == md5(data[f"K-{i}"])

    # A changed file goes to the existing asset; adding media has only a URL form: presigned.
    data["K-1"] = b"keyed, second version " * 9
    s3.pipe_file(f"{BUCKET}/{keys[1]}", data["K-1"])
    assert run(data_job)["loaded"] == 1
    got = records(root)
    assert got["K-1"]["media"]["md5"] == md5(data["K-1"])
    assert got["K-1"]["media"]["source"]["file_url"].endswith(f"/{BUCKET}/{keys[1]}")
    assert routes(root) == {"create": 2, "add_media": 1}


def test_the_non_atomic_400_keeps_the_asset_and_adds_its_media_later_never_a_second_asset(
        mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, www = mp
    rows, data = local_rows(tmp_path / "files", 3)
    data_job = job(root, tmp_path, rows, batch_size=10, concurrency=1, **served(files, www, tmp_path))
    # L-0: the create's media fails ("Asset X created, adding media to asset failed"), and so does
    # the immediate retry on X; L-1: the create's media fails, the retry on X succeeds.
    httpx.post(f"{root}/_sandbox/media_failures", json={"count": 3, "message": "origin timed out"}).raise_for_status()

    first = run(data_job)
    assert (first["loaded"], first["rejected"]) == (2, 1), first
    reason = rejects(first)["L-0"]
    got = records(root)
    assert reason["field"] == "file" and f"asset {got['L-0']['id']} failed: origin timed out" in reason["reason"]
    assert "kept" in reason["reason"]
    assert got["L-0"]["media"] is None and got["L-1"]["media"]["md5"] == md5(data["L-1"])
    assert routes(root) == {"create": 3, "add_media": 2}

    second = run(data_job)
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (1, 2, 0)
    assert routes(root) == {"create": 3, "add_media": 3}  # the media went to the asset created first
    got = records(root)
    assert len(got) == 3 and all(r["media"]["md5"] == md5(data[i]) for i, r in got.items())


def test_a_lost_create_reply_never_duplicates_and_the_asset_can_be_adopted_later(
        mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, www = mp
    rows, data = local_rows(tmp_path / "files", 3)
    settings = served(files, www, tmp_path)
    httpx.post(f"{root}/_sandbox/faults",
               json={"status": 500, "count": 1, "when": "after", "route": "create"}).raise_for_status()

    first = run(job(root, tmp_path, rows, batch_size=10, concurrency=1, **settings))
    assert (first["loaded"], first["exit_code"]) == (3, 0), first
    got = records(root)
    assert sorted(got) == ["L-0", "L-1", "L-2"] and got["L-0"]["media"]["md5"] == md5(data["L-0"])
    assert routes(root) == {"create": 4}  # the lost one, its resend ("taken": it is there), 2 more
    entry = ledger(tmp_path)["L-0"]  # loaded, its asset id unknown (the API cannot look it up)
    assert (entry.status, entry.vendor_id, entry.extra.get("id_unknown")) == ("loaded", None, True)

    # Its Media Pocket id is unknown: a change cannot be sent, and the row says how to fix that.
    rows[0]["title"] = "Changed"
    second = run(job(root, tmp_path, rows, **settings))
    assert (second["loaded"], second["unchanged"], second["rejected"]) == (0, 2, 1)
    reason = rejects(second)["L-0"]
    assert reason["field"] == "id" and "'vendor_id' column" in reason["reason"]
    assert routes(root) == {"create": 4}  # nothing sent for it

    rows[0]["vendor_id"] = got["L-0"]["id"]  # adopt it
    third = run(job(root, tmp_path, rows, **settings))
    assert (third["loaded"], third["unchanged"], third["exit_code"]) == (1, 2, 0)
    assert routes(root) == {"create": 4, "get": 1, "update": 1}  # media kept: it is this very file
    assert records(root)["L-0"]["title"] == "Changed"


def test_an_external_id_taken_by_an_unknown_asset_is_reported_then_adopted(
        mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, www = mp
    rows, data = local_rows(tmp_path / "files", 2)
    stranger = httpx.post(f"{root}/api/v2/projects/{PROJECT}/assets", headers={"X-API-KEY": KEY},
                          json={"title": "made by hand", "external_id": "L-1"}).json()["asset"]
    settings = served(files, www, tmp_path)

    first = run(job(root, tmp_path, rows, **settings))
    assert (first["loaded"], first["rejected"]) == (1, 1)
    reason = rejects(first)["L-1"]
    assert reason["field"] == "id"
    assert "external id 'L-1' has already been taken" in reason["reason"] and "adopt" in reason["reason"]
    assert records(root)["L-1"]["id"] == stranger["id"] and len(records(root)) == 2  # not duplicated

    second = run(job(root, tmp_path, rows, adopt={"L-1": stranger["id"]}, **settings))
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (1, 1, 0)
    got = records(root)["L-1"]
    assert got["id"] == stranger["id"] and got["title"] == "Title L-1"
    assert got["media"]["md5"] == md5(data["L-1"])  # it had none: added
    assert routes(root) == {"create": 3, "get": 1, "update": 1, "add_media": 1}
    assert run(job(root, tmp_path, rows, adopt={"L-1": stranger["id"]}, **settings))["unchanged"] == 2


def test_404_project_rejects_that_projects_rows_and_422_names_the_parameter(
        mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, www = mp
    rows, _ = local_rows(tmp_path / "files", 5)
    rows[1]["parent"] = rows[3]["parent"] = "no-such-project"
    httpx.post(f"{root}/_sandbox/faults", json={
        "status": 422, "count": 1, "route": "create",
        "body": {"error": "Invalid parameter 'tags' value 42: Must be an array of String"}}).raise_for_status()

    summary = run(job(root, tmp_path, rows, batch_size=10, concurrency=1, **served(files, www, tmp_path)))
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (2, 3, 1)
    got = rejects(summary)
    assert got["L-0"]["field"] == "tags" and "Invalid parameter 'tags'" in got["L-0"]["reason"]
    for rid in ("L-1", "L-3"):
        assert got[rid]["field"] == "parent" and "project not found" in got[rid]["reason"]
    assert routes(root) == {"create": 4}  # L-3 was not sent: its project is known to be missing
    assert sorted(records(root)) == ["L-2", "L-4"]


def test_refused_key_stops_the_run_and_is_never_shown(mp: tuple[str, str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, files, www = mp
    monkeypatch.setenv("MEDIAPOCKET_API_KEY", "wrong-mediapocket-key-77")
    rows, _ = local_rows(tmp_path / "files", 3)
    with pytest.raises(ConfigError) as info:
        run(job(root, tmp_path, rows, **served(files, www, tmp_path)))
    assert "refused (401)" in str(info.value) and "wrong-mediapocket-key-77" not in str(info.value)
    assert records(root) == {}


def test_local_files_without_staging_are_rejected_before_sending(mp: tuple[str, str, Path], tmp_path: Path) -> None:
    root, files, _ = mp
    rows, _ = local_rows(tmp_path / "files", 2)
    rows.append({"id": "NOFILE", "title": "x", "file": "gs://bucket/x.png"})
    summary = run(job(root, tmp_path, rows, source={"allowed_roots": [str(tmp_path), "gs://bucket/"]}))
    assert (summary["loaded"], summary["rejected"]) == (0, 3)
    got = rejects(summary)
    assert got["L-0"]["field"] == "file" and "staging" in got["L-0"]["reason"]
    assert got["NOFILE"]["reason"].startswith("gs:// files cannot be fetched")
    assert stats(root)["requests"] == 0


def test_sigkill_mid_run_then_a_rerun_leaves_every_asset_exactly_once(mp: tuple[str, str, Path],
                                                                      tmp_path: Path) -> None:
    """A real SIGKILL of the CLI (and its ephemeral Prefect) while creates are in flight; the
    steps a kill can interrupt are each covered in tests/test_mediapocket_connector.py."""
    root, files, www = mp
    rows, data = local_rows(tmp_path / "files", 30)
    data_job = job(root, tmp_path, rows, batch_size=5, concurrency=2, **{**served(files, www, tmp_path),
                                                                          "requests_per_second": 6})
    path = kit.write_job(tmp_path / "job.yaml", data_job)
    env = {**os.environ, "MEDIAPOCKET_API_KEY": KEY}
    env.pop("PREFECT_API_URL", None)  # ephemeral Prefect, as a user without a server has
    proc = subprocess.Popen([sys.executable, "-m", "assetferry.flows.cli", "run", str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while stats(root)["by_route"]["create"] < 8:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its ephemeral Prefect server
        proc.wait(timeout=30)
    assert 8 <= len(records(root)) < 30

    summary = run(data_job)
    assert (summary["loaded"] + summary["unchanged"], summary["exit_code"]) == (30, 0), summary
    got = records(root)  # fails on any duplicate
    assert sorted(got) == sorted(data)
    assert all(r["media"]["md5"] == md5(data[i]) for i, r in got.items())


def test_the_demo_loads_the_bundled_manifest() -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    result = CliRunner().invoke(app, ["demo", "mediapocket"])
    assert result.exit_code == 0, result.output
    assert "36" in result.output and "sandbox mediapocket" in result.output
