"""End to end: the real sync_assets flow (ephemeral Prefect) into the Wordbee simulator over a real
socket: two steps per file, one session token per run, expiry, paths, the hourly allowance, a
SIGKILL between the two steps, the dry run and the demo."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from assetferry.connectors.core.job import parse_job
from assetferry.connectors.core.ledger import Ledger
from assetferry.sandbox import wordbee as sim
from assetferry.sandbox.server import running
from tests import kit
from tests.kits import wordbee as wb

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running(sim.create_app()) as root:
        yield root


@pytest.fixture
def wordbee(server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean simulator, the credentials in the environment, and no session token left over in
    this process from an earlier test (it is shared per process by design)."""
    from assetferry.connectors.vendors.wordbee import WordbeeConnector

    for name, value in wb.ENV.items():
        monkeypatch.setenv(name, value)
    from pydantic import SecretStr

    c = WordbeeConnector(url=f"{server}/api", settings={"project_id": wb.PROJECT},
                         credentials={"account_id": SecretStr(wb.ACCOUNT), "api_key": SecretStr(wb.KEY)})
    with c.session() as http:
        http.auth.close(http.client)  # type: ignore[union-attr]
    httpx.post(f"{server}/_sandbox/reset").raise_for_status()
    return server


def job_data(root: str, tmp_path: Path, rows: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    settings = overrides.pop("settings", {})
    return {"name": overrides.pop("name", "e2e"), "source": {"url": str(kit.write_csv(tmp_path / "m.csv", rows))},
            "destination": wb.destination(root, **settings), "state": str(tmp_path / "state"),
            "retry_delay_seconds": 0, **overrides}


def run(data: dict[str, Any]) -> dict[str, Any]:
    from assetferry.flows.sync import sync_assets

    return sync_assets(parse_job(data, where="test"))


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def records(root: str) -> list[dict[str, Any]]:
    return httpx.get(f"{root}/_sandbox/records").json()["records"]


def md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def assert_arrived_once(root: str, rows: list[dict[str, Any]], folder: dict[str, str] | None = None) -> None:
    """Every row's file is held exactly once, with identical bytes, at its segment, locale and folder."""
    held = records(root)
    assert sorted(r["name"] for r in held) == sorted(f"{r['id']}.txt" for r in rows)
    by_name = {r["name"]: r for r in held}
    for row in rows:
        asset = by_name[f"{row['id']}.txt"]
        assert asset["md5"] == md5(row["file"]), row["id"]
        assert asset["segment"] == int(row["parent"]) and asset["project"] == wb.PROJECT
        assert asset["locale"] == (row["language"] or None)
        assert asset["relativePath"] == (folder or {}).get(row["id"], "")


def test_every_file_arrives_once_with_identical_bytes_then_a_rerun_sends_nothing(wordbee: str, tmp_path: Path) -> None:
    rows = wb.make_rows(tmp_path / "files", 12)
    for i, row in enumerate(rows):  # a column wins over the setting; "." and "//" are tidied
        row["relative_path"] = "shots//2026/." if i % 2 == 0 else ""
    data = job_data(wordbee, tmp_path, rows, batch_size=4, concurrency=2, settings={"relative_path": "library"})
    summary = run(data)
    assert (summary["loaded"], summary["rejected"], summary["failed"], summary["exit_code"]) == (12, 0, 0, 0), summary
    assert_arrived_once(wordbee, rows, {r["id"]: "shots\\2026" if i % 2 == 0 else "library" for i, r in enumerate(rows)})
    s = stats(wordbee)
    assert (s["uploads"], s["attaches"], s["by_route"]["attach"]) == (12, 12, 12)
    # one session token for the whole run (3 batches, 2 at a time), released at the end
    assert (s["auth_tokens_issued"], s["by_route"]["logout"], s["sessions"], s["tokens_refused"]) == (1, 1, 0, 0)

    ledger = Ledger(summary["state"]).load()
    login = httpx.post(f"{wordbee}/api/auth/token", json={"accountid": wb.ACCOUNT, "key": wb.KEY}).json()
    headers = {"X-Auth-Token": login, "X-Auth-AccountId": wb.ACCOUNT}
    modified = {r["name"]: r["modifiedDate"] for r in records(wordbee)}
    for row in rows[:3]:
        entry = ledger[row["id"]]
        assert entry.status == "loaded" and entry.file_ref is None  # no file token is kept
        assert entry.vendor_id == f"{row['parent']}:{row['language']}:{'shots/2026' if row['relative_path'] else 'library'}:{row['id']}.txt"
        assert entry.extra["modifiedDate"] == modified[f"{row['id']}.txt"]
        got = httpx.get(entry.extra["downloadUrl"], headers=headers)
        assert hashlib.md5(got.content).hexdigest() == md5(row["file"])
    httpx.delete(f"{wordbee}/api/auth/token", headers=headers).raise_for_status()

    before = stats(wordbee)
    again = run(data)
    assert (again["unchanged"], again["loaded"], again["exit_code"]) == (12, 0, 0)
    assert stats(wordbee) == before  # nothing sent, not even a token request


def test_an_attach_that_failed_after_the_vendor_acted_is_redone_with_a_fresh_upload(wordbee: str, tmp_path: Path) -> None:
    httpx.post(f"{wordbee}/_sandbox/faults", json={"status": 500, "count": 1, "route": "attach", "when": "after"})
    httpx.post(f"{wordbee}/_sandbox/faults", json={"status": 502, "count": 1, "route": "attach"})
    rows = wb.make_rows(tmp_path / "files", 4)
    summary = run(job_data(wordbee, tmp_path, rows, batch_size=4, concurrency=1))
    assert (summary["loaded"], summary["exit_code"]) == (4, 0), summary
    assert_arrived_once(wordbee, rows)
    s = stats(wordbee)
    # every attach carried the token of its own upload: a file token is never sent twice
    assert s["by_route"]["attach"] == s["uploads"] == 4 + 2
    assert s["file_tokens_used"] == 4 + 1 and s["overwrites"] == 1


def test_an_expired_token_is_fetched_again_once_and_no_token_reaches_a_log_or_file(
        wordbee: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    from assetferry.flows import sync

    rows = wb.make_rows(tmp_path / "files", 9)
    rows[4]["parent"] = "99999999"  # the vendor refuses it: its reason goes to the rejects file
    expired: list[int] = []

    def expire_after_first_batch(summary: Any) -> None:
        if summary.batches == 1 and not expired:
            expired.append(httpx.post(f"{wordbee}/_sandbox/expire_tokens").json()["expired"])

    sync.PROGRESS_HOOKS.append(expire_after_first_batch)
    caplog.set_level(logging.DEBUG)
    try:
        summary = run(job_data(wordbee, tmp_path, rows, batch_size=3, concurrency=1))
    finally:
        sync.PROGRESS_HOOKS.remove(expire_after_first_batch)
    assert expired == [1]
    assert (summary["loaded"], summary["rejected"]) == (8, 1), summary
    s = stats(wordbee)
    assert (s["auth_tokens_issued"], s["tokens_refused"]) == (2, 1)  # refreshed once, then on
    assert (s["by_route"]["logout"], s["sessions"]) == (1, 0)  # the new token released at the end
    assert_arrived_once(wordbee, [r for i, r in enumerate(rows) if i != 4])
    rejects = Path(summary["rejects_file"]).read_text()
    assert "segmentid" in rejects and rows[4]["id"] in rejects

    from assetferry.connectors.pipeline import make_connector

    auth = make_connector(parse_job(job_data(wordbee, tmp_path, rows), where="test")).auth()
    secrets = [v for v in auth.secrets() if v != wb.ACCOUNT]  # the account id is not a secret on its own
    tokens = [v for v in secrets if v != wb.KEY]
    assert len(tokens) >= 2  # both session tokens of this run are known (and redacted)
    out, err = capfd.readouterr()
    texts = {"log": caplog.text, "stdout": out + err}
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert "fetching a new token" in caplog.text  # the refresh was logged ...
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached {where}"  # ... without the token


def test_paths_and_names_that_would_escape_the_segment_folder_are_rejected_before_sending(
        wordbee: str, tmp_path: Path) -> None:
    rows = wb.make_rows(tmp_path / "files", 11)
    bad = {
        2: ("relative_path", "../../etc", "leaves the segment's asset folder ('..')"),
        3: ("relative_path", "/srv/assets", "is absolute"),
        4: ("relative_path", "C:\\temp", "names a drive"),
        5: ("relative_path", "shots\\2026", "contains a backslash"),
        6: ("file_name", "../evil.txt", "leaves the segment's asset folder ('..')"),
        7: ("file_name", "sub/inner.txt", "is not a plain file name"),
        8: ("file_name", "C:evil.txt", "names a drive"),
        9: ("parent", "seg-1", "is not a Wordbee segment id"),
        10: ("language", "en us", "is not a locale code"),
    }
    for i, (column, value, _) in bad.items():
        rows[i][column] = value
    summary = run(job_data(wordbee, tmp_path, rows))
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (2, 9, 1), summary
    with open(summary["rejects_file"]) as f:
        got = {r["id"]: r for r in csv.DictReader(f)}
    for i, (column, value, why) in bad.items():
        reject = got[rows[i]["id"]]
        assert reject["field"] == column and why in reject["reason"] and value in reject["reason"], reject
    s = stats(wordbee)
    assert (s["uploads"], s["attaches"], s["bytes_uploaded"]) == (2, 2, sum(Path(r["file"]).stat().st_size for r in rows[:2]))


def test_the_hourly_allowance_stops_the_run_with_the_rest_pending_and_a_later_run_finishes(
        wordbee: str, tmp_path: Path) -> None:
    httpx.post(f"{wordbee}/_sandbox/limits", json={"per_hour": 7}).raise_for_status()  # 3 files + 1 upload
    rows = wb.make_rows(tmp_path / "files", 8)
    data = job_data(wordbee, tmp_path, rows, batch_size=2, concurrency=1, settings={"throttle_retries": 0})
    first = run(data)
    assert (first["loaded"], first["pending"], first["failed"], first["exit_code"]) == (3, 5, 0, 1), first
    assert "allowance is spent" in first["stopped"] and "01:00:00" in first["stopped"] and first["resets_at"]
    s = stats(wordbee)
    assert (s["throttled"], s["attaches"], s["by_route"]["logout"]) == (1, 3, 1)  # stopped at once, token released

    httpx.post(f"{wordbee}/_sandbox/limits", json={"per_hour": 1000}).raise_for_status()  # an hour later
    second = run(data)
    assert (second["loaded"], second["unchanged"], second["pending"], second["exit_code"]) == (5, 3, 0, 0), second
    assert_arrived_once(wordbee, rows)


def test_the_client_side_hourly_allowance_stops_before_the_vendor_says_no(wordbee: str, tmp_path: Path) -> None:
    rows = wb.make_rows(tmp_path / "files", 5)
    data = job_data(wordbee, tmp_path, rows, batch_size=5, settings={"requests_per_hour": 5})
    first = run(data)
    assert (first["loaded"], first["pending"], first["exit_code"]) == (2, 3, 1), first
    assert "allowance of 5 requests per 3600 s is spent" in first["stopped"]
    assert stats(wordbee)["throttled"] == 0 and stats(wordbee)["attaches"] == 2
    data["destination"]["settings"]["requests_per_hour"] = 1000  # a bigger allowance
    second = run(data)
    assert (second["loaded"], second["unchanged"]) == (3, 2)
    assert_arrived_once(wordbee, rows)


_LOAD_WITHOUT_PREFECT = """
import sys
from assetferry.connectors.core.job import load_job
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.pipeline import Pipeline, make_connector
job = load_job(sys.argv[1])
connector = make_connector(job)
pipeline = Pipeline(job, connector)
ledger = pipeline.ledger()
priors = ledger.load()
for number, (batch, _) in enumerate(pipeline.batches()):
    with ledger.writer("killed-run", number) as journal:
        Loader(connector).load(batch, priors.get_many(batch["id"].tolist()), journal, "killed-run")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_sigkill_between_the_two_steps_then_a_rerun_leaves_every_asset_once(
        wordbee: str, tmp_path: Path, when: str) -> None:
    """The process dies while the first attach is in flight (held by the simulator), before or
    after the vendor stored it. The rerun uploads that file again (its file token is never
    reused) and every asset is held exactly once."""
    httpx.post(f"{wordbee}/_sandbox/faults", json={"status": 503, "count": 1, "route": "attach", "when": when,
                                                   "delay": 60}).raise_for_status()
    rows = wb.make_rows(tmp_path / "files", 4)
    data = job_data(wordbee, tmp_path, rows, batch_size=2)
    job = kit.write_job(tmp_path / "job.yaml", data)
    env = {**os.environ, **wb.ENV}
    proc = subprocess.Popen([sys.executable, "-c", _LOAD_WITHOUT_PREFECT, str(job)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while stats(wordbee)["held"] < 1:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the attach was never sent"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while stats(wordbee)["held"]:  # the simulator notices the hang-up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed = stats(wordbee)
    assert (killed["uploads"], killed["file_tokens_used"], killed["assets"]) == (1, int(when == "after"),
                                                                                   int(when == "after"))

    summary = run(data)
    assert (summary["loaded"], summary["exit_code"]) == (4, 0), summary
    assert_arrived_once(wordbee, rows)
    s = stats(wordbee)
    assert s["uploads"] == 5 and s["file_tokens_used"] == 4 + int(when == "after")
    assert s["by_route"]["attach"] == 5  # no attach ever carried the killed run's file token
    assert all(e.file_ref is None for e in Ledger(summary["state"]).load().entries())


def test_a_dry_run_shows_both_steps_with_the_token_masked_and_sends_nothing(wordbee: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    rows = wb.make_rows(tmp_path / "files", 3)
    rows[0]["relative_path"] = "shots/2026"
    kit.write_job(tmp_path / "job.yaml", job_data(wordbee, tmp_path, rows))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--dry-run", "--plan", str(tmp_path / "plan.jsonl")])
    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in (tmp_path / "plan.jsonl").read_text().splitlines()]
    assert [i["ids"] for i in items] == [[r["id"]] for r in rows] and {i["action"] for i in items} == {"upload+attach"}
    upload, attach = items[0]["requests"]
    assert upload["url"] == f"{wordbee}/api/media/upload?filename={rows[0]['id']}.txt"
    assert str(Path(rows[0]["file"]).stat().st_size) in upload["body"]
    assert attach["url"] == f"{wordbee}/api/resources/assets/{rows[0]['parent']}?scope=pr{wb.PROJECT}"
    assert attach["json"] == {"filetoken": "<file token returned by the upload>", "locale": "en",
                              "relativePath": "shots/2026"}
    assert upload["headers"]["X-Auth-Token"] == attach["headers"]["X-Auth-Token"] == "***"
    assert stats(wordbee)["requests"] == 0  # not even a token
    assert wb.KEY not in result.output + (tmp_path / "plan.jsonl").read_text()


def test_the_demo_loads_the_bundled_manifest(wordbee: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    for name in ("ASSETFERRY_DEMO_WORDBEE_ACCOUNT", "ASSETFERRY_DEMO_WORDBEE_KEY"):
        monkeypatch.setenv(name, "")  # restored after the test (the demo sets them)
    result = CliRunner().invoke(app, ["demo", "wordbee"])
    assert result.exit_code == 0, result.output
    assert "loaded" in result.output and "36" in result.output
    assert sim.DEMO_API_KEY not in result.output
