"""End to end: the real sync_assets flow into the Esploro simulator over a real socket. Files on
moto S3 (presigned) and local files staged (to S3, or to a folder a static server serves); the
simulator's Load files job really downloads every link, so md5s prove the bytes arrived."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import pytest
import s3fs
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from assetferry.connectors.core.job import parse_job
from assetferry.connectors.core.ledger import Ledger, entry
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.pipeline import Pipeline, make_connector, state_url
from assetferry.sandbox.esploro import DEMO_API_KEY, DEMO_ASSET_IDS, DEMO_JOB_ID, create_app
from assetferry.sandbox.server import running
from tests import kit

pytestmark = pytest.mark.usefixtures("prefect_harness")

ASSETS = DEMO_ASSET_IDS.split(",")
AUTH = {"Authorization": f"apikey {DEMO_API_KEY}", "Accept": "application/json"}
ROOT = Path(__file__).resolve().parent.parent
BUCKET = "esploro-e2e"


# -- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with running(create_app(job_runs_per_hour=1000)) as root:
        yield root


@pytest.fixture
def esploro(sim: str, monkeypatch: pytest.MonkeyPatch) -> str:
    httpx.post(f"{sim}/_sandbox/reset").raise_for_status()
    monkeypatch.setenv("ESPLORO_API_KEY", DEMO_API_KEY)
    return sim


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder and the http root that serves it (a staging area Esploro can fetch from)."""
    folder = tmp_path_factory.mktemp("esploro-served")
    with running(Starlette(routes=[Mount("/", StaticFiles(directory=folder))])) as root:
        yield folder, root


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_options(s3_endpoint, literal=True))
    fs.call_s3("create_bucket", Bucket=BUCKET)  # mkdir sends a LocationConstraint moto refuses
    return fs


def s3_options(endpoint: str, *, literal: bool = False) -> dict[str, Any]:
    keys = ({"key": "testing", "secret": "testing"} if literal
            else {"key": "env:AWS_ACCESS_KEY_ID", "secret": "env:AWS_SECRET_ACCESS_KEY"})
    return {**keys, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def control(root: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{root}/_sandbox/{path}", json=body)
    response.raise_for_status()
    return dict(response.json())


def stats(root: str) -> dict[str, Any]:
    return dict(httpx.get(f"{root}/_sandbox/stats").json())


def links(root: str) -> dict[str, list[dict[str, Any]]]:
    """asset id -> every link Esploro holds (queued, extracted or failed)."""
    records = httpx.get(f"{root}/_sandbox/records").json()["records"]
    return {r["asset_id"]: [k for k in r["links"] if k["status"] != "discarded"] for r in records}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_files(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for n, name in enumerate(names):
        out[name] = f"{name} ".encode() * (40 + n) + os.urandom(16)
        (folder / name).write_bytes(out[name])
    return out


def rows_for(folder: Path, parents: list[str], per_parent: int, prefix: str = "R") -> list[dict[str, Any]]:
    """Rows spread over ``parents`` in turn (a parent's rows are scattered in the manifest)."""
    n = len(parents) * per_parent
    files = make_files(folder, [f"{prefix}-{i:03d}.bin" for i in range(n)])
    return [{"id": f"{prefix}-{i:03d}", "parent": parents[i % len(parents)], "title": f"Title {i}",
             "description": f"Description {i}", "file": str(folder / name)} for i, name in enumerate(files)]


def job_data(root: str, tmp_path: Path, rows: list[dict[str, Any]], settings: dict[str, Any] | None = None,
             **overrides: Any) -> dict[str, Any]:
    manifest = kit.write_csv(tmp_path / "manifest.csv", rows)
    return {
        "name": "esploro-e2e", "source": {"url": str(manifest), **overrides.pop("source", {})},
        "destination": {"vendor": "esploro", "url": root, "credentials": {"api_key": "env:ESPLORO_API_KEY"},
                        "settings": {"job_poll_seconds": 0.05, "job_timeout_seconds": 20,
                                     "throttle_wait_seconds": 0.2, **(settings or {})}},
        "state": str(tmp_path / "state"), "batch_size": 4, "concurrency": 2, "retry_delay_seconds": 0,
        **overrides,
    }


def staged(served: tuple[Path, str]) -> dict[str, Any]:
    folder, root = served
    return {"staging": f"file://{folder}", "public_base_url": root}


def run(data: dict[str, Any]) -> dict[str, Any]:
    from assetferry.flows.sync import sync_assets

    return dict(sync_assets(parse_job(data, where="test")))


def exactly_once(root: str, rows: list[dict[str, Any]], *, extracted: bool = True) -> None:
    """Every row's link is on its parent exactly once (and was downloaded with the right bytes)."""
    held = links(root)
    for r in rows:
        name = Path(r["file"]).name
        mine = [k for k in held.get(r["parent"], []) if Path(urlsplit(k["url"]).path).name == name]
        assert len(mine) == 1, (r["id"], mine)
        if extracted:
            assert mine[0]["status"] == "extracted", mine[0]
            assert mine[0]["md5"] == md5(Path(r["local"] if "local" in r else r["file"]).read_bytes())
    assert sum(len(v) for v in held.values()) == len(rows)


# -- the tests ---------------------------------------------------------------------------------------
def test_s3_and_staged_files_one_request_per_parent_job_extracts_then_rerun_sends_nothing(
        esploro: str, s3: s3fs.S3FileSystem, s3_endpoint: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rows = rows_for(tmp_path / "files", ASSETS, 4)
    for r in rows[::2]:  # half on S3 (presigned), half local (staged to S3, then presigned)
        r["local"] = r["file"]
        s3.put_file(r["file"], f"{BUCKET}/src/{Path(r['file']).name}")
        r["file"] = f"s3://{BUCKET}/src/{Path(r['file']).name}"
    rows[0]["file_type"], rows[0]["supplemental"] = "supplementary", "yes"
    data = job_data(esploro, tmp_path, rows, {"staging": f"s3://{BUCKET}/stage/", "expires_seconds": 3600},
                    source={"options": s3_options(s3_endpoint),  # the manifest's folder + the bucket
                            "allowed_roots": [str(tmp_path), f"s3://{BUCKET}/src/"]}, batch_size=2)

    first = run(data)

    assert (first["loaded"], first["rejected"], first["failed"], first["exit_code"]) == (12, 0, 0, 0), first
    finish = first["finish"]
    assert (finish["status"], finish["loaded"], finish["fetch_failed"], finish["queued"]) == \
        ("COMPLETED_SUCCESS", 12, 0, 0), finish
    assert finish["counters"]["file_uploaded"] == 12 and finish["assets"] == 3
    seen = stats(esploro)
    assert seen["by_route"]["patch_asset"] == 3  # one request per parent, all its files in it
    assert seen["job_runs"] == 1 and seen["apikey_in_query"] == 0 and seen["throttled"] == 0
    assert finish["api_remaining"] == seen["remaining"]
    exactly_once(esploro, rows)
    held = {Path(urlsplit(k["url"]).path).name: k for ks in links(esploro).values() for k in ks}
    for r in rows:
        link = held[Path(r["file"]).name]
        assert (link["title"], link["description"]) == (r["title"], r["description"])
        assert (link["type"], link["supplemental"]) == (("supplementary", True) if r is rows[0] else ("accepted", False))
        query = parse_qs(urlsplit(link["url"]).query)
        assert query["X-Amz-Expires"] == ["3600"] and "X-Amz-Signature" in query  # presigned, SigV4
        assert urlsplit(link["url"]).path.startswith(f"/{BUCKET}/{'src' if 'local' in r else 'stage'}/")
    # a presigned URL (or the key) is never logged nor written to the state folder
    state_text = "".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()
                         and p.suffix != ".parquet")
    state_text += "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "state").rglob("*.parquet"))
    for secret in ("X-Amz-Signature", DEMO_API_KEY):
        assert secret not in state_text
        # (httpx's own request log is left out: the in-process simulator downloads the presigned
        # URLs with httpx, and that is the vendor's side, not ours)
        assert not any(secret in r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))

    second = run(data)

    assert (second["unchanged"], second["loaded"], second["finish"]) == (12, 0, None)
    assert stats(esploro)["requests"] == seen["requests"]  # nothing sent, not even the job


@pytest.mark.parametrize("when, count", [("after", 1), ("before", 2)])
def test_a_lost_or_refused_patch_never_duplicates_a_link(esploro: str, served: tuple[Path, str], tmp_path: Path,
                                                         when: str, count: int) -> None:
    rows = rows_for(tmp_path / "files", ASSETS[:2], 3)
    control(esploro, "faults", {"status": 500, "count": count, "when": when, "route": "patch_asset"})

    summary = run(job_data(esploro, tmp_path, rows, staged(served), concurrency=1))

    assert (summary["loaded"], summary["exit_code"]) == (6, 0), summary
    exactly_once(esploro, rows)
    seen = stats(esploro)
    assert seen["by_route"]["patch_asset"] == 2 + (count if when == "before" else 0)
    assert seen["by_route"]["get_asset"] >= count + 1  # looked up before anything was re-sent


def test_daily_threshold_stops_cleanly_rest_pending_then_a_second_run_finishes(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    parents = [*ASSETS, "991000000400561", "991000000500561"]
    control(esploro, "assets", {"ids": parents[3:]})
    rows = rows_for(tmp_path / "files", parents, 2)
    control(esploro, "limits", {"daily": 2})  # two calls left today
    data = job_data(esploro, tmp_path, rows, staged(served), batch_size=2, concurrency=1)

    first = run(data)

    assert (first["loaded"], first["pending"], first["failed"], first["exit_code"]) == (4, 6, 0, 1), first
    assert "DAILY_THRESHOLD" in first["stopped"] and "daily" in first["stopped"]
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date()
    assert first["resets_at"] == f"{tomorrow.isoformat()}T00:00:00+00:00"
    assert "quota" in first["finish"]["stopped"]  # the job could not start either: links stay queued
    assert stats(esploro)["by_route"]["patch_asset"] == 3  # the third was refused, then nothing more
    assert sum(len(v) for v in links(esploro).values()) == 4
    control(esploro, "limits", {"daily": 100_000})

    second = run(data)

    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (6, 4, 0), second
    assert (second["finish"]["loaded"], second["finish"]["links"]) == (10, 10)  # the first run's too
    exactly_once(esploro, rows)


def test_unknown_asset_and_bad_rows_are_rejected_with_reasons_the_rest_loads(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    folder, files_root = served
    names = make_files(folder / "http", ["h1.pdf", "h2.pdf", "h3.pdf"])
    http = {n: f"{files_root}/http/{n}" for n in names}
    local = make_files(tmp_path / "local", ["l1.pdf"])
    rows = [
        {"id": "ok-1", "parent": ASSETS[0], "file": http["h1.pdf"], "title": "One"},
        {"id": "ghost-1", "parent": "991999999990561", "file": http["h2.pdf"], "title": "Two"},
        {"id": "ok-2", "parent": ASSETS[0], "file": http["h3.pdf"], "title": "Three", "supplemental": "no"},
        {"id": "ghost-2", "parent": "991999999990561", "file": http["h1.pdf"], "title": "Four"},
        {"id": "bad-parent", "parent": "99 1/2", "file": http["h1.pdf"], "title": "Five"},
        {"id": "bad-flag", "parent": ASSETS[1], "file": http["h1.pdf"], "title": "Six", "supplemental": "maybe"},
        {"id": "local", "parent": ASSETS[1], "file": str(tmp_path / "local" / "l1.pdf"), "title": "Seven"},
        {"id": "no-parent", "parent": "", "file": http["h1.pdf"], "title": "Eight"},
    ]
    assert local  # (no staging configured: the local row cannot get a URL)

    summary = run(job_data(esploro, tmp_path, rows, source={"allowed_hosts": ["127.0.0.1"]}))  # the file server

    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (2, 6, 1), summary
    rejects = pd.read_csv(summary["rejects_file"]).set_index("id")
    assert rejects.loc["ghost-1", "field"] == rejects.loc["ghost-2", "field"] == "parent"
    assert "402203" in rejects.loc["ghost-1", "reason"] and "991999999990561" in rejects.loc["ghost-1", "reason"]
    assert rejects.loc["bad-parent", "field"] == "parent" and "not an Esploro asset id" in rejects.loc["bad-parent", "reason"]
    assert rejects.loc["bad-flag", "field"] == "supplemental"
    assert rejects.loc["local", "field"] == "file" and "needs staging" in rejects.loc["local", "reason"]
    assert rejects.loc["no-parent", "reason"] == "missing parent"
    assert stats(esploro)["by_route"]["patch_asset"] == 2  # the good parent + the unknown one, once
    held = links(esploro)[ASSETS[0]]
    assert [(k["title"], k["supplemental"], k["status"]) for k in held] == \
        [("One", False, "extracted"), ("Three", False, "extracted")]
    assert held[0]["md5"] == md5(names["h1.pdf"]) and held[1]["md5"] == md5(names["h3.pdf"])


def test_per_second_threshold_is_waited_out_and_the_default_pace_sees_none(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    parents = [f"9910000{i:04d}0561" for i in range(30)]
    control(esploro, "assets", {"ids": parents})
    rows = rows_for(tmp_path / "a", parents, 1, prefix="A")
    healthy = run(job_data(esploro, tmp_path / "healthy", rows, staged(served), batch_size=5, concurrency=3,
                           source={"allowed_roots": [str(tmp_path)]}))  # files beside the manifest's folder
    assert healthy["loaded"] == 30 and stats(esploro)["throttled"] == 0  # paced at the documented 25/s

    httpx.post(f"{esploro}/_sandbox/reset").raise_for_status()
    control(esploro, "assets", {"ids": parents[:6]})
    control(esploro, "limits", {"per_second": 3})
    rows = rows_for(tmp_path / "b", parents[:6], 1, prefix="B")

    throttled = run(job_data(esploro, tmp_path / "throttled", rows, {**staged(served), "throttle_wait_seconds": 1},
                             batch_size=2, concurrency=3, source={"allowed_roots": [str(tmp_path)]}))

    assert (throttled["loaded"], throttled["failed"]) == (6, 0), throttled
    assert stats(esploro)["throttled"] > 0
    exactly_once(esploro, rows)


def _hashed_rows(data: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The connector and the loader's rows (with the hashes it journals) for a job."""
    job = parse_job(data, where="test")
    connector = make_connector(job)
    frames = [frame for frame, _ in Pipeline(job, connector).batches() if len(frame)]
    return connector, [row for frame in frames for row in Loader(connector).rows(frame, {})[0]]


def _patch(root: str, asset: str, body_links: list[dict[str, str]]) -> None:
    body = {"records": [{"temporary": {"linksToExtract": body_links}}]}
    httpx.post(f"{root}/esploro/v1/assets/{asset}", params={"op": "patch", "action": "add"}, json=body,
               headers=AUTH).raise_for_status()


def _load_files(root: str, assets: list[str]) -> None:
    """Run the Load files job by hand on ``assets`` and wait for it."""
    with httpx.Client(base_url=root, headers=AUTH) as api:
        set_id = api.post("/almaws/v1/conf/sets", json={"name": "by hand", "type": {"value": "ITEMIZED"},
                                                        "content": {"value": "IER"}}).json()["id"]
        api.post(f"/almaws/v1/conf/sets/{set_id}", params={"op": "add_members"},
                 json={"members": {"member": [{"id": a} for a in assets]}}).raise_for_status()
        run_ = api.post(f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", params={"op": "run"},
                        json={"parameter": [{"name": {"value": "set_id"}, "value": set_id}]})
        link = run_.json()["additional_info"]["link"]
        for _ in range(500):
            if api.get(link).json()["status"]["value"].startswith("COMPLETED"):
                return
            time.sleep(0.02)
    raise AssertionError("the job did not complete")


def test_killed_before_send_after_store_and_after_the_job_then_rerun_leaves_each_link_once(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    rows = rows_for(tmp_path / "files", ASSETS, 2)
    data = job_data(esploro, tmp_path, rows, staged(served))
    connector, todo = _hashed_rows(data)
    # The killed run journaled its intent for every row...
    with Ledger(state_url(parse_job(data, where="t"), connector)).writer("killed", 0) as journal:
        for row in todo:
            journal.record(entry(row.id, "intent", "killed", hash=row.hash, file_hash=row.file_hash))
    # ...ASSETS[0]: killed before sending; ASSETS[1]: killed after Esploro stored the patch;
    # ASSETS[2]: stored, and the Load files job ran since (e.g. by hand) before the rerun.
    for asset in ASSETS[1:]:
        mine = [r for r in todo if r.data["parent"] == asset]
        _patch(esploro, asset, [{"link.url": connector._url(r), **connector._meta(r.data)} for r in mine])
    _load_files(esploro, [ASSETS[2]])
    assert stats(esploro)["files_extracted"] == 2

    summary = run(data)

    assert (summary["loaded"], summary["exit_code"]) == (6, 0), summary
    assert stats(esploro)["by_route"]["patch_asset"] == 3  # two by the killed run, one by the rerun
    assert summary["finish"]["loaded"] == 4  # ASSETS[2]'s files were loaded already
    exactly_once(esploro, rows)
    again = run(data)
    assert (again["unchanged"], again["finish"]) == (6, None)


def test_links_queued_but_job_never_ran_are_loaded_by_the_next_run(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    rows = rows_for(tmp_path / "files", ASSETS[:2], 2)
    off = run(job_data(esploro, tmp_path, rows, {**staged(served), "load_files": False}))
    assert off["loaded"] == 4 and "not run" in off["finish"]["job"] and stats(esploro)["job_runs"] == 0
    exactly_once(esploro, rows, extracted=False)

    on = run(job_data(esploro, tmp_path, rows, staged(served)))

    assert (on["unchanged"], on["finish"]["loaded"]) == (4, 4)
    exactly_once(esploro, rows)


def test_job_threshold_then_timeout_leave_links_queued_and_a_later_run_loads_them(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    rows = rows_for(tmp_path / "files", ASSETS[:1], 2)
    control(esploro, "limits", {"max_running_jobs": 1})
    control(esploro, "jobs", {"hold": True})
    with httpx.Client(base_url=esploro, headers=AUTH) as api:  # someone else's job, held: 1 running
        set_id = api.post("/almaws/v1/conf/sets", json={"name": "other", "type": {"value": "ITEMIZED"},
                                                        "content": {"value": "IER"}}).json()["id"]
        api.post(f"/almaws/v1/conf/jobs/{DEMO_JOB_ID}", params={"op": "run"},
                 json={"parameter": [{"name": {"value": "set_id"}, "value": set_id}]}).raise_for_status()
    fast = {**staged(served), "job_start_timeout_seconds": 0.3, "job_timeout_seconds": 0.3}

    first = run(job_data(esploro, tmp_path, rows, fast))

    assert first["loaded"] == 2 and "402222" in first["finish"]["job"] and first["finish"]["queued"] == 2
    control(esploro, "limits", {"max_running_jobs": 3})
    second = run(job_data(esploro, tmp_path, rows, fast))  # starts, but the job stays queued (held)
    assert second["finish"]["timed_out"] is True and second["finish"]["status"] == "QUEUED"
    control(esploro, "jobs", {"hold": False})

    third = run(job_data(esploro, tmp_path, rows, staged(served)))

    # (the second run's job, released too, may have fetched them first: then this one had nothing)
    assert (third["unchanged"], third["finish"]["loaded"]) == (2, 2), third
    assert third["finish"]["status"] in ("COMPLETED_SUCCESS", "COMPLETED_NO_BULKS")
    mine = [k for k in links(esploro)[ASSETS[0]]]
    assert len(mine) == 2 and all(k["status"] == "extracted" for k in mine)  # each extracted once


def test_a_changed_row_is_added_again_or_rejected_as_configured(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    rows = rows_for(tmp_path / "files", ASSETS[:1], 2)
    assert run(job_data(esploro, tmp_path, rows, staged(served)))["loaded"] == 2
    rows[0]["title"] = "A better title"

    refused = run(job_data(esploro, tmp_path, rows, {**staged(served), "on_change": "reject"}))
    assert (refused["rejected"], refused["unchanged"]) == (1, 1)
    assert "on_change" in pd.read_csv(refused["rejects_file"])["reason"][0]
    assert stats(esploro)["by_route"]["patch_asset"] == 1

    # the re-add is not idempotent either: its reply is lost, and it is still added once
    control(esploro, "faults", {"status": 502, "count": 1, "when": "after", "route": "patch_asset"})
    added = run(job_data(esploro, tmp_path, rows, staged(served)))
    assert (added["loaded"], added["unchanged"]) == (1, 1)
    assert stats(esploro)["by_route"]["patch_asset"] == 2
    titles = sorted(k["title"] for k in links(esploro)[ASSETS[0]])
    assert titles == ["A better title", "Title 0", "Title 1"]  # the old file stays (add cannot replace)


def test_sigkill_mid_run_then_rerun_leaves_every_link_exactly_once(
        esploro: str, served: tuple[Path, str], tmp_path: Path) -> None:
    parents = [f"9920000{i:04d}0561" for i in range(24)]
    control(esploro, "assets", {"ids": parents})
    rows = rows_for(tmp_path / "files", parents, 1)
    data = job_data(esploro, tmp_path, rows, {**staged(served), "requests_per_second": 4},
                    batch_size=3, concurrency=2)
    job = kit.write_job(tmp_path / "job.yaml", data)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "ESPLORO_API_KEY": DEMO_API_KEY}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "assetferry.flows.cli", "run", str(job)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while stats(esploro)["by_route"]["patch_asset"] < 6:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its ephemeral Prefect server
        proc.wait(timeout=30)
    killed_at = stats(esploro)["by_route"]["patch_asset"]
    assert 6 <= killed_at < 24

    data["destination"]["settings"]["requests_per_second"] = 25  # not part of what defines "changed"
    summary = run(data)

    assert summary["loaded"] + summary["unchanged"] == 24 and summary["exit_code"] == 0, summary
    assert stats(esploro)["by_route"]["patch_asset"] <= 24  # nothing was sent twice
    exactly_once(esploro, rows)


def test_demo_loads_the_sample_manifest_and_runs_the_job(esploro: str) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    result = CliRunner().invoke(app, ["demo", "esploro"])

    assert result.exit_code == 0, result.output
    assert "36" in result.output and "status=COMPLETED_SUCCESS" in result.output and "loaded=36" in result.output
