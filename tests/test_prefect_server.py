"""Against a real ``prefect server`` (what the UI shows): run names, artifacts, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys
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
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false")
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


def test_run_against_a_server_shows_names_artifacts_and_no_secret(prefect_server: str, kontent: str,
                                                                   tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 12)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", name="ui-check",
        batch_size=5, settings={"requests_per_second": 50, "requests_per_minute": 3000}))
    kit.set_limits(kontent, 100, 6000)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, KONTENT_API_KEY=kit.KEY,
               PREFECT_HOME=str(tmp_path / "client-home"), PREFECT_LOGGING_LEVEL="INFO")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(job)], env=env, cwd=ROOT,
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
