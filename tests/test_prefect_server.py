"""Against a real ``prefect server`` (what the UI shows): run names, artifacts, no secrets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import kit
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # The UI is served too (checked in headless Chromium); a server on a non-default port needs
    # its own API URL in its environment, or the UI it serves points at port 4200.
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="true", PREFECT_API_URL=api_url, PREFECT_UI_API_URL=api_url,
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "prefect server exited"
            assert time.monotonic() < deadline, "prefect server did not become healthy"
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str) -> str:
    """The page's DOM after its scripts ran, from Debian's headless Chromium (installed by .ci/run)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed here (.ci/run installs it with apt-get)")
    with tempfile.TemporaryDirectory(prefix="assetferry-chromium-") as profile:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=30000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return out.stdout


def test_run_against_a_server_shows_names_artifacts_and_no_secret(prefect_server: str, kontent: str,
                                                                   tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 12)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", name="ui-check",
        batch_size=5, settings={"requests_per_second": 50, "requests_per_minute": 3000}))
    kit.set_limits(kontent, 100, 6000)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, KONTENT_API_KEY=kit.KEY,
               PREFECT_HOME=str(tmp_path / "client-home"), PREFECT_LOGGING_LEVEL="INFO")
    out = subprocess.run([sys.executable, "-m", "assetferry.flows.cli", "run", str(job)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert kit.KEY not in out.stdout + out.stderr

    api = httpx.Client(base_url=prefect_server, timeout=30)
    flow_runs = api.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["ui-check-to-kontent"]}}}).json()
    assert len(flow_runs) == 1 and flow_runs[0]["state_type"] == "COMPLETED"
    run = flow_runs[0]
    assert run["parameters"]["job"]["destination"]["credentials"] == {"api_key": "env:KONTENT_API_KEY"}
    assert kit.KEY not in str(run["parameters"])

    tasks = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
    assert sorted(t["name"] for t in tasks) == [f"ui-check-kontent-batch-{i}" for i in range(3)]
    assert all(t["state_type"] == "COMPLETED" for t in tasks)

    artifacts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    by_key = {a["key"]: a for a in artifacts}
    summary = by_key["ui-check-kontent-summary"]
    assert summary["type"] == "table"
    assert '"loaded"' in str(summary["data"]) and "12" in str(summary["data"])
    progress = by_key["ui-check-kontent-progress"]
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0

    logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}).json()
    assert any("12 loaded" in log["message"] for log in logs), [log["message"] for log in logs]
    assert not any(kit.KEY in log["message"] for log in logs)


def test_a_partial_run_is_told_apart_in_the_ui_with_reasons_and_connector_logs(
        prefect_server: str, kontent: str, tmp_path: Path) -> None:
    """Started from Python (as a deployment would: no CLI, no PREFECT_LOGGING_EXTRA_LOGGERS)."""
    rows = kit.make_rows(tmp_path / "files", 6)
    rows[1]["folder"] = "no-such-folder"  # the vendor refuses this row
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", name="ui-partial",
        batch_size=3, settings={"requests_per_second": 50, "requests_per_minute": 3000}))
    kit.set_limits(kontent, 100, 6000)
    httpx.post(f"{kontent}/_sandbox/faults", json={"status": 429, "count": 1, "retry_after": 1,
                                                   "route": "upsert"}).raise_for_status()
    env = dict(os.environ, PREFECT_API_URL=prefect_server, KONTENT_API_KEY=kit.KEY,
               PREFECT_HOME=str(tmp_path / "client-home"), PREFECT_LOGGING_LEVEL="INFO")
    env.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)
    code = ("from assetferry.connectors.core.job import load_job\nfrom assetferry.flows.sync import sync_assets\n"
            f"state = sync_assets(load_job({str(job)!r}), return_state=True)\nprint(state.name)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    api = httpx.Client(base_url=prefect_server, timeout=30)
    run = api.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["ui-partial-to-kontent"]}}}).json()[0]
    assert run["state_type"] == "COMPLETED" and run["state_name"] == "Partial"
    assert "1 rejected" in run["state"]["message"]
    artifacts = {a["key"]: a for a in api.post(
        "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()}
    rejects = artifacts["ui-partial-kontent-rejects"]
    assert rejects["type"] == "markdown" and rows[1]["id"] in rejects["data"]
    assert "no-such-folder" in rejects["data"] and "rejects.csv" in rejects["data"]
    summary = str(artifacts["ui-partial-kontent-summary"]["data"])
    assert "429s seen" in summary and "rejects.csv" in summary
    assert "6 of 6 rows" in (artifacts["ui-partial-kontent-progress"]["description"] or "")
    logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}).json()
    messages = [(log["level"], log["name"], log["message"]) for log in logs]
    assert any(level == 30 and "1 rejected" in m for level, _, m in messages), messages
    assert any(name == "assetferry.http" and "429" in m for _, name, m in messages), messages

    # What a user sees in the UI, rendered in headless Chromium: the run page shows the Partial
    # state; the rejects artifact shows the refused row and its reason; the summary its counts.
    ui = prefect_server.removesuffix("/api")
    page = render(f"{ui}/runs/flow-run/{run['id']}")
    assert "Partial" in page and "ui-partial-to-kontent" in page
    page = render(f"{ui}/artifacts/artifact/{rejects['id']}")
    assert rows[1]["id"] in page and "does not exist" in page
    page = render(f"{ui}/artifacts/artifact/{artifacts['ui-partial-kontent-summary']['id']}")
    assert "429s seen" in page and "rejects.csv" in page


def test_a_deployment_schedule_creates_runs(prefect_server: str, tmp_path: Path) -> None:
    """The scheduler works with the pinned stack (sqlalchemy 2.1 broke it: active schedule, no runs)."""
    code = (
        "from assetferry.flows.sync import sync_assets\n"
        "d = sync_assets.to_deployment(name='nightly-check', cron='0 2 * * *', parameters={'job': {"
        "'name': 'x', 'source': {'url': '/nowhere.csv'}, 'destination': {'vendor': 'kontent'}}})\n"
        "print(d.apply())\n"
    )
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "client-home"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    deployment_id = out.stdout.strip().splitlines()[-1]
    api = httpx.Client(base_url=prefect_server, timeout=30)
    deadline = time.monotonic() + 60
    runs: list = []
    while time.monotonic() < deadline and not runs:
        runs = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}).json()
        time.sleep(1)
    assert runs, "the schedule created no runs"
    assert all(r["state_type"] == "SCHEDULED" for r in runs)
    assert {r["expected_start_time"][11:16] for r in runs} == {"02:00"}


def test_the_sample_deployment_runs_on_a_process_worker(prefect_server: str, kontent: str, tmp_path: Path) -> None:
    """deployments/prefect.yaml as a user copies it: deploy, trigger, a process worker runs the
    job file it references (read at run time; env: references resolved on the worker)."""
    import yaml

    rows = kit.make_rows(tmp_path / "files", 4)
    job_file = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", name="deployed",
        settings={"requests_per_second": 50, "requests_per_minute": 3000}))
    kit.set_limits(kontent, 100, 6000)
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployment = spec["deployments"][0]
    deployment.update(name="deployed-check", parameters={"job_file": str(job_file)}, schedules=[])
    deployment["work_pool"]["name"] = "assetferry-test"
    spec["deployments"] = [deployment]
    spec.pop("definitions", None)
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "client-home"),
               ASSETFERRY_HOME=str(ROOT), KONTENT_API_KEY=kit.KEY, PREFECT_LOGGING_LEVEL="INFO")

    def prefect(*args: str, timeout: float = 180) -> str:
        out = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    prefect("work-pool", "create", "assetferry-test", "--type", "process")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    prefect("deployment", "run", "sync-job/deployed-check")
    prefect("worker", "start", "--pool", "assetferry-test", "--run-once", timeout=300)

    api = httpx.Client(base_url=prefect_server, timeout=30)
    runs = api.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["deployed-to-kontent"]}}}).json()
    assert len(runs) == 1, [r["name"] for r in api.post("/flow_runs/filter", json={}).json()]
    run = runs[0]
    assert run["state_type"] == "COMPLETED", run["state"]
    assert {"job:product-images", "vendor:kontent"} <= set(run["tags"])  # the deployment's tags
    assert kit.stats(kontent)["assets"] == 4
    logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}).json()
    assert any("4 loaded" in log["message"] for log in logs)
    assert not any(kit.KEY in log["message"] for log in logs)
    # A three-window backfill as deployment runs, executed by a long-running worker.
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "assetferry-test"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        out = subprocess.run([sys.executable, "-m", "assetferry.flows.cli", "backfill", str(job_file), "--since", "2026-01-01",
                              "--until", "2026-01-04", "--window", "1d", "--deployment", "sync-job/deployed-check",
                              "--output", "json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = api.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["backfill"]}},
                                               "sort": "EXPECTED_START_TIME_ASC"}).json()
    names = sorted(r["name"] for r in runs)
    assert names == [f"deployed-to-kontent-2026-01-0{d}T000000..2026-01-0{d + 1}T000000" for d in (1, 2, 3)], names
    assert all(r["state_type"] == "COMPLETED" for r in runs)
    assert all(any(t.startswith("window:") for t in r["tags"]) for r in runs)


def test_serve_registers_a_scheduled_deployment_per_job(prefect_server: str, kontent: str, tmp_path: Path) -> None:
    job_file = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", kit.make_rows(tmp_path / "files", 1))), kontent, tmp_path / "state",
        name="served"))
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "client-home"))
    proc = subprocess.Popen([sys.executable, "-m", "assetferry.flows.cli", "serve", str(job_file), "--cron", "30 3 * * *",
                             "--timezone", "Europe/Berlin"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    api = httpx.Client(base_url=prefect_server, timeout=30)
    try:
        deadline = time.monotonic() + 90
        found: list = []
        while not found and time.monotonic() < deadline:
            assert proc.poll() is None, "serve exited"
            found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": ["served-to-kontent"]}}}).json()
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert found, "serve registered no deployment"
    deployment = found[0]
    assert deployment["parameters"] == {"job_file": str(job_file.resolve())}
    assert {"job:served", "vendor:kontent"} <= set(deployment["tags"])
    schedule = deployment["schedules"][0]["schedule"]
    assert schedule["cron"] == "30 3 * * *" and schedule["timezone"] == "Europe/Berlin"
    assert deployment["global_concurrency_limit"]["limit"] == 1
