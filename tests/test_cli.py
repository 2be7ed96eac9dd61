"""The CLI as users run it: SIGKILL + resume, dry run, validate, demo, and no secret anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import kit

ROOT = Path(__file__).resolve().parent.parent


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "KONTENT_API_KEY": kit.KEY, **extra})
    env.pop("PREFECT_API_URL", None)  # ephemeral Prefect, as a user without a server has
    return env


def writes(stats: dict) -> int:
    """Requests that could change the environment (reads of its listings excluded)."""
    return sum(stats["by_route"][r] for r in ("upload", "create", "upsert", "delete", "modify_folders",
                                                 "modify_taxonomy"))


def assetferry(*args: str) -> list[str]:
    return [sys.executable, "-m", "assetferry.flows.cli", *args]


@pytest.mark.usefixtures("prefect_harness")
def test_sigkill_mid_run_then_rerun_loads_each_asset_exactly_once(kontent: str, tmp_path: Path) -> None:
    from assetferry.connectors.core.job import load_job
    from assetferry.flows.sync import sync_assets

    kit.set_limits(kontent, 10, 400)
    rows = kit.make_rows(tmp_path / "files", 40)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", batch_size=10, concurrency=2))
    proc = subprocess.Popen(assetferry("run", str(job)), env=cli_env(tmp_path), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while kit.stats(kontent)["uploads"] < 12:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its ephemeral Prefect server
        proc.wait(timeout=30)
    killed_at = kit.stats(kontent)
    assert 12 <= killed_at["uploads"] < 40

    summary = sync_assets(load_job(job))
    assert summary["loaded"] + summary["unchanged"] == 40
    assert summary["unchanged"] >= killed_at["assets"] - 2  # what was confirmed is not re-sent
    assets = kit.list_assets(kontent)
    ids = [a["external_id"] for a in assets]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # each asset exactly once
    # At most the files in flight at the kill (one per concurrent batch) are uploaded twice.
    assert kit.stats(kontent)["uploads"] <= 40 + 2


def test_dry_run_shows_requests_sends_nothing_and_needs_no_prefect(kontent: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 3)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state"))
    plan = tmp_path / "plan.jsonl"
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from assetferry.flows.cli import app\n"
        f"r = CliRunner().invoke(app, ['run', {str(job)!r}, '--dry-run', '--plan', {str(plan)!r}])\n"
        "print(r.output)\n"
        "print('PREFECT IMPORTED' if 'prefect' in sys.modules else 'no prefect')\n"
        "sys.exit(r.exit_code)\n"
    )
    before = kit.stats(kontent)
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(tmp_path), cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no prefect" in out.stdout
    after = kit.stats(kontent)
    assert writes(after) == writes(before)  # nothing sent ...
    assert after["by_route"]["languages"] > before["by_route"]["languages"]  # ... the environment was read
    assert "checked against the vendor" in out.stdout
    items = [json.loads(line) for line in plan.read_text().splitlines()]
    assert [i["ids"] for i in items] == [[r["id"]] for r in rows]
    assert {i["action"] for i in items} == {"upload+upsert"}
    upload, upsert = items[0]["requests"]
    assert upload["method"] == "POST" and upload["url"].endswith(f"/v2/projects/{kit.ENV}/files/a-0000.txt")
    assert upload["headers"]["Content-Type"] == "text/plain"
    assert int(upload["headers"]["Content-Length"]) == Path(rows[0]["file"]).stat().st_size
    assert upsert["method"] == "PUT" and upsert["url"].endswith(f"/assets/external-id/{rows[0]['id']}")
    assert upsert["json"]["title"] == rows[0]["title"]
    # the environment was read, so the plan shows what a load sends: the default language by its id
    assert upsert["json"]["descriptions"] == [{"language": {"id": "00000000-0000-0000-0000-000000000000"},
                                               "description": "Alt text 0"}]
    assert upsert["headers"]["Authorization"] == "Bearer ***"
    assert kit.KEY not in out.stdout and kit.KEY not in plan.read_text()


def test_validate_reports_rejects_without_sending(kontent: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    rows = kit.make_rows(tmp_path / "files", 2) + [{"id": "X1", "file": str(tmp_path / "missing.png")},
                                                    {"id": "", "file": "whatever.png"}]
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state"))
    before = writes(kit.stats(kontent))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 1
    assert "file not found" in result.output and "missing id" in result.output
    assert writes(kit.stats(kontent)) == before


def test_config_error_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    job = kit.write_job(tmp_path / "job.yaml", {"name": "x", "source": {"url": "m.csv"},
                                                "destination": {"vendor": "kontent", "settings": {}}})
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2
    assert "destination.settings.environment_id" in result.output
    assert "destination.credentials.api_key" in result.output
    assert "Traceback" not in result.output


def test_demo_runs_from_the_readme_and_leaks_no_secret(tmp_path: Path) -> None:
    """The README's first command (after install): the sandbox demo through the real flow."""
    env = cli_env(tmp_path)
    env.pop("KONTENT_API_KEY")
    out = subprocess.run(assetferry("demo"), env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "│     36 │" in out.stdout  # 36 loaded
    # The key must not reach any log line or Prefect's database (parameters, logs, artifacts).
    assert kit.KEY not in out.stdout + out.stderr
    for path in (tmp_path / "prefect-home").rglob("*"):
        if path.is_file():
            assert kit.KEY.encode() not in path.read_bytes(), path


def test_window_and_limit_select_rows_in_a_dry_run(kontent: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    rows = kit.make_rows(tmp_path / "files", 6)
    for i, r in enumerate(rows):
        r["updated_at"] = f"2026-0{i + 1}-15T12:00:00Z"  # Jan .. Jun
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state"))
    plan = tmp_path / "plan.jsonl"
    result = CliRunner().invoke(app, ["run", str(job), "--dry-run", "--plan", str(plan),
                                      "--since", "2026-02-01", "--until", "2026-05-01"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["ids"][0] for x in plan.read_text().splitlines()] == [r["id"] for r in rows[1:4]]
    result = CliRunner().invoke(app, ["run", str(job), "--dry-run", "--plan", str(plan), "--limit", "2"])
    assert [json.loads(x)["ids"][0] for x in plan.read_text().splitlines()] == [r["id"] for r in rows[:2]]
    result = CliRunner().invoke(app, ["run", str(job), "--dry-run", "--since", "last tuesday"])
    assert result.exit_code == 2 and "invalid since" in result.output


def test_sandbox_command_serves_the_simulator(tmp_path: Path) -> None:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(assetferry("sandbox", "kontent", "--port", str(port)), env=cli_env(tmp_path),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v2/projects/{kit.ENV}/assets",
                              headers={"Authorization": f"Bearer {kit.KEY}"}, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["assets"] == []
        assert httpx.get(f"http://127.0.0.1:{port}/v2/projects/{kit.ENV}/assets").status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
