"""One run per job at a time: a second run refuses (or waits), a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assetferry.connectors.core.lock import JobBusy, RunLock
from tests import kit


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    with RunLock(str(tmp_path), "run-1"):
        with pytest.raises(JobBusy, match="already running: run run-1 on .* started"):
            RunLock(str(tmp_path), "run-2").acquire()
    with RunLock(str(tmp_path), "run-3"):  # released: free again
        pass


def test_a_waiting_run_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    first = RunLock(str(tmp_path), "run-1").acquire()
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with RunLock(str(tmp_path), "run-2", wait_seconds=10, poll=0.1):
        assert 0.4 < time.monotonic() - started < 5


def test_a_sigkilled_holder_never_blocks_the_next_run(tmp_path: Path) -> None:
    code = ("import sys, time\nsys.path.insert(0, %r)\nfrom assetferry.connectors.core.lock import RunLock\n"
            "lock = RunLock(%r, 'doomed').acquire()\nprint('held', flush=True)\ntime.sleep(60)\n"
            % (str(Path(__file__).resolve().parent.parent), str(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(JobBusy, match="doomed"):
            RunLock(str(tmp_path), "run-2").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with RunLock(str(tmp_path), "run-3"):
        pass


def test_object_store_lease(s3_endpoint: str, tmp_path: Path) -> None:
    import s3fs

    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    if not fs.exists("locks"):
        fs.mkdir("locks")
    url = f"s3://locks/{tmp_path.name}"
    holder = RunLock(url, "run-1", options, stale_seconds=30).acquire()
    with pytest.raises(JobBusy, match="run-1"):
        RunLock(url, "run-2", options).acquire()
    holder.release()
    assert not fs.exists(f"locks/{tmp_path.name}/lock.json")
    # a killed holder's lease goes stale and is taken over
    fs.pipe_file(f"locks/{tmp_path.name}/lock.json", b'{"run": "dead", "renewed": 1}')
    RunLock(url, "run-3", options).acquire().release()


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_run_refuses_while_another_run_of_the_job_loads(kontent: str, tmp_path: Path) -> None:
    from assetferry.connectors.core.job import load_job
    from assetferry.connectors.pipeline import make_connector, state_url
    from assetferry.flows.sync import sync_assets

    rows = kit.make_rows(tmp_path / "files", 3)
    job = load_job(kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state")))
    with RunLock(state_url(job, make_connector(job)), "nightly-run"):
        with pytest.raises(JobBusy, match="nightly-run"):
            sync_assets(job)
    assert kit.stats(kontent)["requests"] == 0  # nothing was sent by the refused run
    assert sync_assets(job)["loaded"] == 3
