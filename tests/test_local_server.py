"""The local Prefect server assetferry starts on first use (flows/server.py): started once, reused,
shared by commands starting at once, a stale PID file replaced, stopped; lazy imports kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from assetferry.flows import server

from tests import kit
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ, PREFECT_HOME=str(home), ASSETFERRY_PREFECT_SERVER="local",
               ASSETFERRY_PREFECT_PORT=str(port), KONTENT_API_KEY=kit.KEY)
    env.pop("PREFECT_API_URL", None)
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assetferry", *args], check=False, env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_started_on_first_use_shared_reused_and_stopped(kontent: str, tmp_path: Path) -> None:
    home, port = tmp_path / "prefect-home", free_port()
    home.mkdir()
    env = _env(home, port)
    # A PID file left by a server that is gone (a reboot, a kill -9): stale, replaced.
    stale = server.ServerInfo(pid=_dead_pid(), port=free_port(), url="http://127.0.0.1:9/api", home=str(home),
                              started_at=0.0, log=str(home / "x.log"))
    (home / server.STATE_FILE).write_text(json.dumps(stale.__dict__))
    try:
        assert _cli(env, "server", "status").returncode == 1  # the stale file is not a running server

        # Two commands starting at once: one starts the server, the other waits and reuses it.
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda _: _cli(env, "server", "start"), range(2)))
        assert all(o.returncode == 0 for o in outs), [o.stderr[-1500:] for o in outs]
        words = sorted(o.stdout.split(":")[0] for o in outs)
        assert words == ["running", "started"], [o.stdout for o in outs]
        info = server.read_info(home)
        assert info is not None and info.pid != stale.pid and info.port == port
        assert server.status(home) == info
        assert sum(f"--port {port}" in _cmdline(p) for p in _pids()) == 1  # one server, not two

        # `run` reuses it (says nothing about starting one); the runs are on that server.
        rows = kit.make_rows(tmp_path / "files", 3)
        job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent,
                                                                tmp_path / "state", name="local-server"))
        for expected in (3, 0):  # the second run has nothing to send
            out = _cli(env, "run", str(job), "--output", "json")
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            assert json.loads(out.stdout)["loaded"] == expected
            assert "started the local server" not in out.stderr
        assert server.read_info(home) == info
        runs = httpx.post(f"{info.url}/flow_runs/filter",
                          json={"flow_runs": {"name": {"any_": ["local-server-to-kontent"]}}}).json()
        assert len(runs) == 2 and all(r["state_type"] == "COMPLETED" for r in runs)

        # --no-server: Prefect's ephemeral mode for one command. It writes to the same database in
        # the Prefect home, so the local server's UI shows that run too.
        out = _cli(env, "run", str(job), "--no-server", "--output", "json")
        assert out.returncode == 0, out.stderr[-2000:]
        assert "local server" not in out.stderr
        runs = httpx.post(f"{info.url}/flow_runs/filter",
                          json={"flow_runs": {"name": {"any_": ["local-server-to-kontent"]}}}).json()
        assert len(runs) == 3

        out = _cli(env, "server", "status", "--output", "json")
        assert out.returncode == 0 and json.loads(out.stdout)["pid"] == info.pid
        out = _cli(env, "server", "stop")
        assert out.returncode == 0 and str(info.pid) in out.stdout
        assert not (home / server.STATE_FILE).exists()
        assert not server._alive(info.pid)
        assert _cli(env, "server", "status").returncode == 1
    finally:
        server.stop(home)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_configured_api_url_or_ephemeral_mode_starts_nothing(tmp_path: Path) -> None:
    """In a fresh process (this one may hold a Prefect test harness's settings)."""
    code = f"""
import os
import pytest
from pathlib import Path
from assetferry.connectors.core.errors import ConfigError
from assetferry.flows import server
home = Path({str(tmp_path)!r})
os.environ.update(PREFECT_HOME=str(home), ASSETFERRY_PREFECT_SERVER="local", PREFECT_API_URL="http://127.0.0.1:9/api")
choice = server.choose(need_server=True)
assert (choice.how, choice.url) == ("configured", "http://127.0.0.1:9/api"), choice
del os.environ["PREFECT_API_URL"]
(home / "profiles.toml").write_text('active = "mine"\\n[profiles.mine]\\nPREFECT_API_URL = "http://h:1/api"\\n')
assert server.choose().url == "http://h:1/api"  # from the active Prefect profile
(home / "profiles.toml").unlink()
assert server.choose(no_server=True).how == "ephemeral"
os.environ["ASSETFERRY_PREFECT_SERVER"] = "ephemeral"
assert server.choose().how == "ephemeral"
with pytest.raises(ConfigError, match="needs a Prefect server"):
    server.choose(need_server=True, why="runner dask")
os.environ["ASSETFERRY_PREFECT_SERVER"] = "sometimes"
with pytest.raises(ConfigError, match="local or ephemeral"):
    server.choose()
assert not (home / server.STATE_FILE).exists()
print("OK")
"""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "OK", out.stderr[-2000:]


def test_validate_dry_run_and_help_never_import_prefect(kontent: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 2)
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(str(kit.write_csv(tmp_path / "m.csv", rows)), kontent,
                                                            tmp_path / "state", name="lazy"))
    for args in (["--help"], ["run", "--help"], ["validate", str(job)], ["run", str(job), "--dry-run"],
                 ["server", "--help"], ["server", "status"]):
        code = ("import sys\nfrom assetferry.flows.cli import app\n"
                f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
                "print('IMPORTED:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('prefect', 'prefect_dask', 'distributed'))[:5]))\n")
        env = _env(tmp_path / "home", free_port())
        out = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        last = out.stdout.strip().splitlines()[-1]
        assert last == "IMPORTED:", (args, last, out.stderr[-1500:])


def test_a_cli_run_sends_no_heartbeats_unless_the_user_set_them(monkeypatch) -> None:  # noqa: ANN001
    """Prefect's default heartbeat thread sleeps in 1 s steps and is joined at the end of every
    run (up to 1 s per command); a run started from the CLI turns it off unless the user set
    the heartbeat frequency (environment or Prefect profile), which is then kept."""
    from assetferry.flows.cli import _no_default_heartbeats
    from prefect.settings import get_current_settings

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect's own default (180 s in 3.8) would start the thread
    with _no_default_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == default
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with _no_default_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == default  # the user's choice stands


def test_an_unused_local_server_stops_by_itself_and_a_command_using_it_keeps_it(
        tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """ASSETFERRY_PREFECT_IDLE_MINUTES: the watcher started with the server stops it once no
    command used it for that long; a command running longer than that keeps it; the next
    command starts it again on the same database."""
    import time

    home = tmp_path / "home"
    for name, value in (("PREFECT_HOME", str(home)), ("ASSETFERRY_PREFECT_SERVER", "local"),
                        ("ASSETFERRY_PREFECT_PORT", str(free_port())), ("ASSETFERRY_PREFECT_IDLE_MINUTES", "0.1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        info, started = server.ensure(home)
        assert started and server.describe_info(info)["stops_after_idle_minutes"] == 0.1
        # a later command's environment says nothing: it keeps pace with the server's own setting
        monkeypatch.delenv("ASSETFERRY_PREFECT_IDLE_MINUTES")
        assert server.describe_info(server.read_info(home))["stops_after_idle_minutes"] == 0.1
        with server.using(server.ApiChoice(info.url, "reused", info)):  # a command lasting 2x the idle time
            time.sleep(13)
            assert server.status(home) == info
        deadline = time.monotonic() + 60
        while server.read_info(home) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.read_info(home) is None and not server._alive(info.pid)  # stopped by itself
        assert "after 0.1 minutes without use" in (home / server.LOG_FILE).read_text()
        again, started = server.ensure(home)
        assert started and again.pid != info.pid and server.status(home) == again
    finally:
        server.stop(home)


def test_the_idle_setting_is_checked(monkeypatch) -> None:  # noqa: ANN001
    from assetferry.connectors.core.errors import ConfigError

    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("ASSETFERRY_PREFECT_IDLE_MINUTES", bad)
        try:
            server.idle_minutes()
        except ConfigError as exc:
            assert "ASSETFERRY_PREFECT_IDLE_MINUTES" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    monkeypatch.setenv("ASSETFERRY_PREFECT_IDLE_MINUTES", "0")
    assert server.idle_minutes() == 0
    monkeypatch.delenv("ASSETFERRY_PREFECT_IDLE_MINUTES")
    assert server.idle_minutes() == server.DEFAULT_IDLE_MINUTES
