"""End to end: the real sync_assets flow (and the CLI) into the ActionHub simulator over a real
socket: 2,000 rows in a handful of requests, exactly once, a rerun that sends nothing, a label
change updated in place, a 422 naming rows, values over the schema's limits, a refused key, and
a SIGKILL mid-run followed by a rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.job import parse_job
from assetferry.connectors.vendors.actionhub import TRUNCATED
from assetferry.sandbox.actionhub import DEMO_API_KEY, DEMO_OTHER_PROGRAM_ID, DEMO_PROGRAM_ID, create_app
from assetferry.sandbox.server import running
from tests import kit

pytestmark = pytest.mark.usefixtures("prefect_harness")

A, B = DEMO_PROGRAM_ID, DEMO_OTHER_PROGRAM_ID
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running(create_app()) as root:  # the simulator's own 10 requests/s per key
        yield root


@pytest.fixture
def hub(server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    httpx.post(f"{server}/_sandbox/reset").raise_for_status()
    monkeypatch.setenv("ACTIONHUB_API_KEY", DEMO_API_KEY)
    return server


def job_dict(root: str, tmp_path: Path, rows: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    manifest = kit.write_csv(tmp_path / "m.csv", rows)
    return {
        "name": "ah-e2e",
        "source": {"url": str(manifest)},
        "destination": {"vendor": "actionhub", "url": root, "credentials": {"api_key": "env:ACTIONHUB_API_KEY"},
                        "settings": {"program_id": A, **overrides.pop("settings", {})}},
        "state": str(tmp_path / "state"),
        "batch_size": 1000,
        "retry_delay_seconds": 0,
        **overrides,
    }


def run(data: dict[str, Any]) -> dict[str, Any]:
    from assetferry.flows.sync import sync_assets

    return sync_assets(parse_job(data, where="test"))


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def records(root: str) -> dict[str, dict[str, Any]]:
    found = httpx.get(f"{root}/_sandbox/records").json()["records"]
    assert len({r["asset_id"] for r in found}) == len(found)  # no id in two programs, none twice
    return {r["asset_id"]: r for r in found}


def rows_of(n: int) -> list[dict[str, Any]]:
    """Every fourth row names the second program through ``parent``; the others use the setting."""
    return [{"id": f"AH-{i:05d}", "title": f"Asset {i}", "tags": f"t{i % 7}|batch",
             "parent": B if i % 4 == 0 else ""} for i in range(n)]


def test_2000_rows_arrive_once_in_a_handful_of_requests_then_a_rerun_sends_nothing(hub: str, tmp_path: Path) -> None:
    rows = rows_of(2000)
    job = job_dict(hub, tmp_path, rows)
    first = run(job)
    assert (first["loaded"], first["rejected"], first["failed"], first["exit_code"]) == (2000, 0, 0, 0), first
    # two batches of 1000 rows; each: 750 rows of program A (500 + 250) and 250 of program B
    assert stats(hub)["by_route"] == {"upsert": 6, "list": 0} and first["requests"] == 6
    stored = records(hub)
    assert {k: (v["program_id"], v["asset_name"], v["labels"], v["writes"]) for k, v in stored.items()} == {
        r["id"]: (B if r["parent"] else A, r["title"], r["tags"].split("|"), 1) for r in rows}

    second = run(job)
    assert (second["loaded"], second["unchanged"], second["exit_code"]) == (0, 2000, 0)
    assert stats(hub)["requests"] == 6  # nothing sent at all

    rows[7]["tags"] = "changed|label"
    third = run(job_dict(hub, tmp_path, rows))
    assert (third["loaded"], third["unchanged"]) == (1, 1999)
    assert stats(hub)["by_route"]["upsert"] == 7
    after = records(hub)
    assert len(after) == 2000
    assert (after["AH-00007"]["labels"], after["AH-00007"]["writes"], after["AH-00007"]["program_id"]) == (
        ["changed", "label"], 2, A)  # updated in place: same asset, same program


def test_a_422_naming_rows_rejects_exactly_those_rows(hub: str, tmp_path: Path) -> None:
    refused = ["AH-00002", "AH-00015", "AH-00017"]
    httpx.post(f"{hub}/_sandbox/refuse", json={"asset_ids": refused}).raise_for_status()
    rows = [dict(r, parent="") for r in rows_of(30)]
    summary = run(job_dict(hub, tmp_path, rows, settings={"assets_per_request": 10}))
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (27, 3, 1), summary
    assert stats(hub)["by_route"]["upsert"] == 5  # 2 + 2 + 1: each refused request resent without its bad rows
    assert sorted(records(hub)) == sorted(r["id"] for r in rows if r["id"] not in refused)
    rejects = pd.read_csv(summary["rejects_file"])
    assert rejects["id"].tolist() == refused
    assert set(rejects["field"]) == {"id"}
    assert set(rejects["reason"]) == {"ActionHub refused id: Value error, asset_id is not accepted"}


def test_values_over_the_schema_limits_are_rejected_before_sending_or_truncated(hub: str, tmp_path: Path) -> None:
    rows = [{"id": "ok", "title": "fine", "tags": "a"}, {"id": "i" * 65, "title": "x"},
            {"id": "long-name", "title": "n" * 130, "tags": "b"}]
    summary = run(job_dict(hub, tmp_path, rows))
    assert (summary["loaded"], summary["rejected"]) == (1, 2)
    rejects = pd.read_csv(summary["rejects_file"]).set_index("id")
    assert rejects.loc["i" * 65, "field"] == "id" and "at most 64" in rejects.loc["i" * 65, "reason"]
    assert rejects.loc["long-name", "field"] == "title" and "truncate_names" in rejects.loc["long-name", "reason"]
    assert stats(hub)["rejected"] == 0 and list(records(hub)) == ["ok"]  # the vendor never saw them

    again = run(job_dict(hub, tmp_path, rows, settings={"truncate_names": True}))
    assert (again["loaded"], again["unchanged"], again["rejected"]) == (1, 1, 1)
    assert again["extra"]["notes"] == {TRUNCATED: 1}
    assert records(hub)["long-name"]["asset_name"] == "n" * 124


def test_a_refused_key_stops_the_run_with_a_configuration_error(hub: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    monkeypatch.setenv("ACTIONHUB_API_KEY", "not-the-key-0123")
    data = job_dict(hub, tmp_path, rows_of(40), settings={"assets_per_request": 10})
    with pytest.raises(ConfigError) as info:
        run(data)
    assert "Could not validate API KEY" in str(info.value) and "not-the-key-0123" not in str(info.value)
    assert stats(hub)["by_route"]["upsert"] == 1  # stopped at the first refusal, never retried
    result = CliRunner().invoke(app, ["run", str(kit.write_job(tmp_path / "job.yaml", data))])
    assert result.exit_code == 2 and "Could not validate API KEY" in result.output
    assert "not-the-key-0123" not in result.output
    assert not records(hub)


def test_sigkill_mid_run_then_a_rerun_leaves_every_asset_once(hub: str, tmp_path: Path) -> None:
    rows = rows_of(100)
    slow = job_dict(hub, tmp_path, rows, batch_size=20, concurrency=2,
                    settings={"assets_per_request": 5, "requests_per_second": 2})  # 20 requests: ~10 s
    job = kit.write_job(tmp_path / "job.yaml", slow)
    from prefect.settings import PREFECT_API_URL

    # The CLI joins the test harness's Prefect server (as a user with a server does): no
    # ephemeral server start-up in the child, so the run gets going within seconds.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "ACTIONHUB_API_KEY": DEMO_API_KEY,
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen([sys.executable, "-m", "assetferry.flows.cli", "run", str(job)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while stats(hub)["asset_writes"] < 15:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its ephemeral Prefect server
        proc.wait(timeout=30)
    killed_at = stats(hub)["asset_writes"]
    assert 15 <= killed_at < 100

    fast = dict(slow, destination=dict(slow["destination"], settings={"program_id": A, "assets_per_request": 5,
                                                                    "requests_per_second": 10}))
    summary = run(fast)
    assert summary["loaded"] + summary["unchanged"] == 100 and summary["exit_code"] == 0
    # what was confirmed before the kill is not sent again (at most the two requests in flight)
    assert summary["unchanged"] >= killed_at - 2 * 5
    stored = records(hub)
    assert {k: (v["program_id"], v["asset_name"]) for k, v in stored.items()} == {
        r["id"]: (B if r["parent"] else A, r["title"]) for r in rows}
    writes = Counter(v["writes"] for v in stored.values())
    assert set(writes) <= {1, 2} and writes[2] <= 2 * 5


def test_the_demo_job_loads_both_programs_and_notes_the_truncated_title(hub: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import ExitStack

    from assetferry.sandbox import actionhub

    with ExitStack() as stack:
        fields, env = actionhub.demo_job(hub, Path(actionhub.__file__).parent / "demo", stack)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        summary = run({"name": "demo-actionhub", "state": str(tmp_path / "state"), **fields})
    assert (summary["loaded"], summary["exit_code"], summary["extra"]) == (36, 0, {"notes": {TRUNCATED: 1}})
    assert Counter(r["program_id"] for r in records(hub).values()) == {A: 30, B: 6}
    assert stats(hub)["by_route"]["upsert"] == 2  # one request per program
