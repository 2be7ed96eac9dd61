"""Batches on a 2-worker local Dask cluster against a real Prefect server, the Kontent rate budget
shared by every process through a Prefect global concurrency limit (connectors/core/budget.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from assetferry.connectors.core.budget import BudgetPlan, SharedBudget, limit_name, plan
from assetferry.connectors.core.ratelimit import Window
from assetferry.flows import server

from tests import kit
from tests.conftest import free_port

pytest.importorskip("prefect_dask")  # the `dask` extra (installed with `test`)

ROOT = Path(__file__).resolve().parent.parent
PER_SECOND, PER_MINUTE = 10, 400  # the simulator's limits and the job's settings: the budget to share


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """assetferry's own local server (flows/server.py) in a Prefect home of this module's; the
    environment a `run` subprocess needs to reuse it. Stopped at the end."""
    home = tmp_path_factory.mktemp("dask-prefect-home")
    env = dict(os.environ, PREFECT_HOME=str(home), ASSETFERRY_PREFECT_SERVER="local",
               ASSETFERRY_PREFECT_PORT=str(free_port()), KONTENT_API_KEY=kit.KEY)
    env.pop("PREFECT_API_URL", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSETFERRY_PREFECT_PORT", env["ASSETFERRY_PREFECT_PORT"])
        info, _ = server.ensure(home)
    try:
        yield info.url, env
    finally:
        server.stop(home)


def _job(tmp_path: Path, root: str, name: str, n: int, **extra: object) -> Path:
    rows = kit.make_rows(tmp_path / name / "files", n, prefix=name[:3].upper())
    settings = {"requests_per_second": PER_SECOND, "requests_per_minute": PER_MINUTE}
    return kit.write_job(tmp_path / name / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / name / "m.csv", rows)), root, tmp_path / name / "state", name=name,
        batch_size=8, concurrency=2, settings=settings, **extra))


def _run(env: dict[str, str], job: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`assetferry run` in its own process group: on a timeout its Dask workers go too."""
    cmd = [sys.executable, "-m", "assetferry", "run", str(job), "--output", "json", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"run timed out: {err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _exactly_once(root: str, expected: set[str]) -> None:
    ids = Counter(r["external_id"] for r in httpx.get(f"{root}/_sandbox/records").json()["records"])
    assert set(ids) == expected and set(ids.values()) == {1}, ids.most_common(3)


def test_a_job_on_a_two_worker_dask_cluster_shares_the_vendor_limit(
        prefect_api: tuple[str, dict[str, str]], kontent: str, tmp_path: Path) -> None:
    api, env = prefect_api
    kit.set_limits(kontent, PER_SECOND, PER_MINUTE)
    job = _job(tmp_path, kontent, "daskjob", 40)
    out = _run(env, job, "--runner", "dask")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "local Dask cluster" in out.stderr and "needs a real Prefect server" not in out.stderr
    summary = json.loads(out.stdout)
    assert (summary["loaded"], summary["failed"], summary["throttled"]) == (40, 0, 0)
    stats = kit.stats(kontent)
    assert stats["throttled"] == 0, stats  # the simulator never saw its limit exceeded
    _exactly_once(kontent, {f"DAS-{i:04d}" for i in range(40)})

    # The run and its batches are on the server, with the shared budget's global limit.
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["daskjob-to-kontent"]}}}).json()
    assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED"
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [runs[0]["id"]]}}}).json()
    batches = [t for t in tasks if "-batch-" in t["name"]]
    # 40 rows in batches of 8, two at a time: the first is staggered (4), then 8, 8, 8, 8, 4
    assert len(batches) == 6 and all(t["state_type"] == "COMPLETED" for t in batches)
    name = limit_name("kontent", kit.ENV)
    gcl = httpx.get(f"{api}/v2/concurrency_limits/{name}").json()
    expected = plan(name, [Window(PER_SECOND, 1.0), Window(PER_MINUTE, 60.0)], min_interval=1 / PER_SECOND)
    assert expected is not None
    assert (gcl["limit"], gcl["slot_decay_per_second"]) == (expected.block, expected.rate)


def test_two_concurrent_jobs_on_one_vendor_budget_stay_under_it(
        prefect_api: tuple[str, dict[str, str]], kontent: str, tmp_path: Path) -> None:
    _, env = prefect_api
    kit.set_limits(kontent, PER_SECOND, PER_MINUTE)
    # Each alone would be paced at the full limit by its own processes: together, twice over it.
    jobs = [_job(tmp_path, kontent, "first", 24, runner="dask"), _job(tmp_path, kontent, "second", 24, runner="dask")]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda job: _run(env, job), jobs))
    for out in outs:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        assert json.loads(out.stdout)["loaded"] == 24
    stats = kit.stats(kontent)
    assert stats["throttled"] == 0, stats
    _exactly_once(kontent, {f"FIR-{i:04d}" for i in range(24)} | {f"SEC-{i:04d}" for i in range(24)})


def test_a_shared_budget_leases_blocks_and_drops_expired_ones() -> None:
    """The wrapper alone, with a fake global limit and clock: one lease per block, the local
    limiter's slot released when the lease fails, an expired lease dropped."""
    now = [0.0]
    leases: list[tuple[str, int]] = []

    released: list[object] = []

    class Local:
        def acquire(self) -> object:
            return object()

        def release(self, token: object) -> None:
            released.append(token)

        def penalise(self, seconds: float) -> None:
            pass

    budget = BudgetPlan(name="assetferry:kontent:x", block=3, rate=5.0, ttl=0.25)
    shared = SharedBudget(Local(), budget, lambda name, n: leases.append((name, n)), clock=lambda: now[0])
    for _ in range(6):
        shared.acquire()
    assert leases == [("assetferry:kontent:x", 3)] * 2
    shared.acquire()  # a third block: 2 left in it
    now[0] += 1.0
    shared.acquire()  # those 2 expired: dropped, a fourth block leased
    assert (len(leases), shared.dropped) == (4, 2)

    def refuse(name: str, n: int) -> None:
        raise TimeoutError("no slot")

    failing = SharedBudget(Local(), budget, refuse, clock=lambda: now[0])
    from assetferry.connectors.core.errors import TransientError

    with pytest.raises(TransientError, match="could not be leased"):
        failing.acquire()
    assert len(released) == 1  # the local slot was given back


def test_the_budget_plan_keeps_every_window_under_its_limit() -> None:
    """Grants at least block/rate apart, each spent within ttl: at most `limit` per window."""
    for windows in ([Window(10, 1.0), Window(400, 60.0)], [Window(1, 2.0)], [Window(100, 1.0)], [Window(3, 1.0)]):
        p = plan("n", windows, min_interval=windows[0].seconds / windows[0].limit)
        assert p is not None and p.rate > 0
        for w in windows:
            span = w.seconds + p.ttl + 0.1
            blocks = int(span * p.rate / p.block) + 1
            assert blocks * p.block <= w.limit, (w, p)
    assert plan("n", []) is None
    assert limit_name("kontent", "a/b c") == "assetferry:kontent:a_b_c"


def test_a_job_on_a_remote_dask_scheduler_runs_its_batches_on_that_clusters_workers(
        prefect_api: tuple[str, dict[str, str]], kontent: str, tmp_path: Path) -> None:
    """``--runner dask://host:port``: a scheduler and two workers started apart from the run (as
    on other machines; here on loopback). The workers resolve the credential reference from their
    own environment and report to the same Prefect API; the budget is shared through it."""
    api, env = prefect_api
    kit.set_limits(kontent, PER_SECOND, PER_MINUTE)
    port = free_port()
    # INFO on the workers' console (an in-process CLI test may have left a quieter level in
    # os.environ), so their log shows which batches they ran
    cluster_env = dict(env, PREFECT_API_URL=api, PREFECT_LOGGING_LEVEL="INFO",
                       PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO")
    logs = tmp_path / "cluster"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *args: str) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + name, *args], env=cluster_env,
                                          cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    spawn("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
    spawn("worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
          "--host", "127.0.0.1")
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        job = _job(tmp_path, kontent, "remote", 24)
        out = _run(env, job, "--runner", f"dask://127.0.0.1:{port}")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:] + (logs / "worker.log").read_text()[-3000:]
        assert f"the Dask scheduler at 127.0.0.1:{port}" in out.stderr
        summary = json.loads(out.stdout)
        assert (summary["loaded"], summary["failed"], summary["throttled"]) == (24, 0, 0)
        assert kit.stats(kontent)["throttled"] == 0
        _exactly_once(kontent, {f"REM-{i:04d}" for i in range(24)})
        worked = (logs / "worker.log").read_text()
        assert "remote-kontent-batch-" in worked and " loaded" in worked  # the batches ran on those workers
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
