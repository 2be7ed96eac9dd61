"""The local Prefect server assetferry starts on first use and reuses (no server to manage by hand).

A ``run`` in ephemeral mode pays a temporary Prefect server start in every process (6-7 s, more
on a busy machine). Instead the first command starts ``prefect server start --host 127.0.0.1``
detached, in the user's Prefect home (``$PREFECT_HOME``, default ``~/.prefect``: the database
ephemeral runs used, so earlier runs stay visible), records its PID and port in
``assetferry-server.json`` there, and every later command finds it healthy and points
``PREFECT_API_URL`` at it. ``assetferry server status|stop`` manage it.

Settings (environment):
- ``PREFECT_API_URL`` set (environment or the active Prefect profile): used as is, nothing started.
- ``ASSETFERRY_PREFECT_SERVER``: ``local`` (default) or ``ephemeral`` (Prefect's temporary
  server per command, as before; ``run --no-server`` does the same for one command).
- ``ASSETFERRY_PREFECT_PORT``: the port of a server to start (default 4200 when free, else a free one).
- ``ASSETFERRY_PREFECT_IDLE_MINUTES``: a server assetferry started stops by itself after this many
  minutes without a command using it (default 120; 0 = never). A small watcher process started
  with it checks ``assetferry-server.used``, which every command using the server touches (once a
  minute while a run lasts); the next command starts the server again (the database is kept).

Concurrent first use: starting happens under an exclusive lock file (``assetferry-server.lock``),
so two commands starting at once share one server. A PID file whose process is gone (or is not a
Prefect server any more) is stale: it is replaced. This module imports no Prefect (it starts the
server as a subprocess), so it costs nothing to commands that do not run flows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assetferry.connectors.core.errors import ConfigError

STATE_FILE = "assetferry-server.json"
LOCK_FILE = "assetferry-server.lock"
LOG_FILE = "assetferry-server.log"
DEFAULT_PORT = 4200
START_TIMEOUT = 180.0  # a first start migrates the database (16-21 s idle; more on a busy CI box)
MODES = ("local", "ephemeral")

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers started by this process (reaped on stop)


@dataclass(frozen=True)
class ServerInfo:
    """What the PID file records about a server assetferry started."""

    pid: int
    port: int
    url: str  # the API URL, e.g. http://127.0.0.1:4200/api
    home: str
    started_at: float
    log: str
    idle_minutes: float | None = None  # what its idle watcher was given (0: never; None: not recorded)

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


def prefect_home() -> Path:
    """The user's Prefect home, as Prefect resolves it (``PREFECT_HOME``, default ``~/.prefect``)."""
    return Path(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect")).resolve()


def mode() -> str:
    """``local`` or ``ephemeral`` from ``ASSETFERRY_PREFECT_SERVER``. Raises ConfigError."""
    value = os.environ.get("ASSETFERRY_PREFECT_SERVER", "local").strip().lower() or "local"
    if value not in MODES:
        raise ConfigError(f"ASSETFERRY_PREFECT_SERVER={value!r}: use local or ephemeral")
    return value


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment, else from the active Prefect profile (read from
    ``profiles.toml`` without importing Prefect)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    if "prefect.settings" in sys.modules:  # already imported (a caller's process, a test harness)
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
        return str(url) if url else None
    import tomllib

    path = Path(os.path.expanduser(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml"))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    value = (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")
    return str(value) if value else None


# -- the PID file -------------------------------------------------------------------------------
def read_info(home: Path | None = None) -> ServerInfo | None:
    path = (home or prefect_home()) / STATE_FILE
    try:
        return ServerInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_info(info: ServerInfo) -> None:
    path = Path(info.home) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _remove_info(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / STATE_FILE).unlink()


def _alive(pid: int) -> bool:
    """The process exists, is not a zombie, and (where /proc tells) is a Prefect server."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the PID over
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if (proc / "stat").read_text().split(")")[-1].split()[0] == "Z":
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return "prefect" in cmdline and "server" in cmdline
    return True


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def healthy(url: str, timeout: float = 2.0) -> bool:
    """The Prefect API at ``url`` answers its health check."""
    import httpx

    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def status(home: Path | None = None) -> ServerInfo | None:
    """The recorded server if its process is alive and its API healthy, else None."""
    info = read_info(home)
    if info and _alive(info.pid) and healthy(info.url):
        return info
    return None


# -- start / stop -------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(home: Path, timeout: float, *, shared: bool = False) -> Iterator[None]:
    """A lock on ``home/assetferry-server.lock`` (released by the OS if we die): exclusive to
    start or stop the server, ``shared`` to start using a running one (many commands at once;
    never while the idle watcher is stopping it)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"another assetferry command has been starting the Prefect server "
                                      f"for {timeout:.0f} s (lock {home / LOCK_FILE})") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port() -> int:
    wanted = os.environ.get("ASSETFERRY_PREFECT_PORT")
    if wanted:
        try:
            port = int(wanted)
        except ValueError:
            raise ConfigError(f"ASSETFERRY_PREFECT_PORT={wanted!r}: not a port number") from None
        if not _port_free(port):
            raise ConfigError(f"ASSETFERRY_PREFECT_PORT={port}: the port is in use by something that is not "
                              "assetferry's Prefect server (set PREFECT_API_URL to use a server of your own)")
        return port
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure(home: Path | None = None, *, timeout: float = START_TIMEOUT) -> tuple[ServerInfo, bool]:
    """The running server, started if needed: ``(info, started_now)``. Safe to call from several
    processes at once (one starts, the others wait for it and reuse it). Raises ConfigError when
    the server does not become healthy within ``timeout`` (its log file is named)."""
    home = home or prefect_home()
    with _locked(home, timeout, shared=True):  # the common case: one health check
        info = status(home)
        if info:
            touch(home)  # under the lock: the idle watcher cannot be stopping it now
            return info, False
    with _locked(home, timeout):
        info = read_info(home)
        if info and _alive(info.pid):
            if _wait_healthy(info, min(30.0, timeout)):  # started by a command that died since?
                touch(home)
                return info, False
            _terminate(info.pid)  # alive but not answering: replace it
        _remove_info(home)  # stale: its process is gone
        info = _start(home)
        if not _wait_healthy(info, timeout):
            _terminate(info.pid)
            _remove_info(home)
            raise ConfigError(f"the local Prefect server did not become healthy in {timeout:.0f} s; "
                              f"see {info.log} (or set ASSETFERRY_PREFECT_SERVER=ephemeral)")
        return info, True


def _start(home: Path) -> ServerInfo:
    idle = idle_minutes()  # a bad value is refused before anything starts
    port = _choose_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_UI_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED=os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
               DO_NOT_TRACK=os.environ.get("DO_NOT_TRACK", "1"))
    log = home / LOG_FILE
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=str(home), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    info = ServerInfo(pid=proc.pid, port=port, url=url, home=str(home), started_at=time.time(), log=str(log),
                      idle_minutes=idle)
    _write_info(info)
    touch(home)
    _spawn_watch(info, idle * 60)
    return info


def _wait_healthy(info: ServerInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(info.url, timeout=2.0):
            return True
        if not _alive(info.pid):
            return False
        time.sleep(0.25)
    return False


def _terminate(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the server's process group (it runs uvicorn), SIGKILL after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            child = _CHILDREN.get(pid)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.2)
            if not _alive(pid):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.1)


def stop(home: Path | None = None) -> ServerInfo | None:
    """Stop the recorded server (if any) and remove its PID file; returns what was stopped."""
    home = home or prefect_home()
    with _locked(home, START_TIMEOUT):
        info = read_info(home)
        if info is None:
            return None
        if _alive(info.pid):
            _terminate(info.pid)
        _remove_info(home)
        return info


# -- stopping when idle ---------------------------------------------------------------------------
USED_FILE = "assetferry-server.used"
DEFAULT_IDLE_MINUTES = 120.0


def idle_minutes() -> float:
    """``ASSETFERRY_PREFECT_IDLE_MINUTES``: stop the local server after this long without a command
    using it (default 120; 0 = never). Raises ConfigError."""
    raw = os.environ.get("ASSETFERRY_PREFECT_IDLE_MINUTES", "").strip()
    if not raw:
        return DEFAULT_IDLE_MINUTES
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"ASSETFERRY_PREFECT_IDLE_MINUTES={raw!r}: not a number of minutes") from None
    if value < 0 or value != value:
        raise ConfigError(f"ASSETFERRY_PREFECT_IDLE_MINUTES={raw!r}: use 0 (never) or a positive number")
    return value


def touch(home: Path | None = None) -> None:
    """Record that a command is using the local server now (the idle clock restarts)."""
    path = (home or prefect_home()) / USED_FILE
    with contextlib.suppress(OSError):
        path.touch()


class _KeepAlive:
    """While a command runs on the local server (a load may take hours), restart its idle clock
    from a daemon thread, four times per idle period of that server's watcher (at least once a
    minute)."""

    def __init__(self, home: Path, minutes: float) -> None:
        import threading

        self._every = min(60.0, max(0.5, minutes * 60 / 4))
        self._home = home
        self._done = threading.Event()
        touch(home)
        self._thread = threading.Thread(target=self._run, name="assetferry-server-keepalive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            touch(self._home)

    def stop(self) -> None:
        self._done.set()
        touch(self._home)  # the idle time counts from the end of the command


def _last_used(home: Path, since: float) -> float:
    try:
        return max(since, (home / USED_FILE).stat().st_mtime)
    except OSError:
        return since


def _spawn_watch(info: ServerInfo, idle: float) -> None:
    """A small detached process that stops the server after ``idle`` seconds without use."""
    if idle <= 0:
        return
    log = open(info.log, "ab")  # noqa: SIM115 - handed to the child
    try:
        subprocess.Popen([sys.executable, "-m", "assetferry.flows.server", "watch", info.home, str(info.pid),
                          str(idle)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, cwd=info.home)
    finally:
        log.close()


def watch(home: Path, pid: int, idle: float, *, clock: Any = time.time, sleep: Any = time.sleep) -> str:
    """The watcher's loop: returns why it ended. Ends when the server it watches is gone or
    replaced, or stops it once nothing used it for ``idle`` seconds (under the start lock, so a
    command starting to use it at that moment either gets it before or starts a new one after)."""
    started = clock()
    every = min(5.0, max(0.5, idle / 4))  # a stat and a /proc read: the server's end is noticed soon
    while True:
        sleep(every)
        info = read_info(home)
        if info is None or info.pid != pid or not _alive(pid):
            return "gone"
        if clock() - _last_used(home, started) < idle:
            continue
        with _locked(home, START_TIMEOUT):
            info = read_info(home)
            if info is None or info.pid != pid:
                return "gone"
            if clock() - _last_used(home, started) < idle:
                continue
            _terminate(pid)
            _remove_info(home)
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} assetferry: stopped the local Prefect server (pid {pid}) "
              f"after {idle / 60:g} minutes without use", flush=True)
        return "stopped"


# -- for the CLI --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiChoice:
    """Which Prefect API a command uses and why (for one line of output)."""

    url: str | None  # None: Prefect's ephemeral mode
    how: str  # "configured" | "reused" | "started" | "ephemeral"
    info: ServerInfo | None = None

    def describe(self) -> str:
        if self.how == "ephemeral":
            return "Prefect: ephemeral server for this command (runs kept in the Prefect home)"
        if self.how == "configured":
            return f"Prefect: using PREFECT_API_URL {self.url}"
        verb = "started" if self.how == "started" else "using"
        return (f"Prefect: {verb} the local server at {self.info.ui if self.info else self.url} "
                "(`assetferry server stop` stops it)")


def choose(*, no_server: bool = False, need_server: bool = False, why: str = "") -> ApiChoice:
    """Pick the Prefect API for a command that runs flows: a configured ``PREFECT_API_URL``; else
    the local server (started on first use) unless ``no_server`` or ``ASSETFERRY_PREFECT_SERVER``
    says ephemeral. ``need_server``: ephemeral mode is refused with ``why`` (e.g. Dask workers
    cannot reach an ephemeral server). Raises ConfigError. Call before Prefect is imported."""
    url = configured_api_url()
    if url:
        return ApiChoice(url, "configured")
    if no_server or mode() == "ephemeral":
        if need_server:
            raise ConfigError(f"{why} needs a Prefect server, not Prefect's ephemeral mode: drop --no-server / "
                              "ASSETFERRY_PREFECT_SERVER=ephemeral, or set PREFECT_API_URL")
        return ApiChoice(None, "ephemeral")
    info, started = ensure()
    return ApiChoice(info.url, "started" if started else "reused", info)


@contextlib.contextmanager
def using(choice: ApiChoice) -> Iterator[ApiChoice]:
    """Point Prefect at ``choice.url`` for the block: through the environment (read when Prefect
    is imported, and inherited by child processes such as Dask workers) and, if Prefect is
    already imported (tests, a caller's own process), through its settings context."""
    if choice.url is None or choice.how == "configured":
        yield choice
        return
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = choice.url
    idle = choice.info.idle_minutes if choice.info is not None else None
    # a server recorded without its setting (an older PID file) gets the default's pace
    keepalive = (_KeepAlive(Path(choice.info.home), DEFAULT_IDLE_MINUTES if idle is None else idle)
                 if choice.info is not None and idle != 0 else None)
    try:
        if "prefect.settings" in sys.modules:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: choice.url}):
                yield choice
        else:
            yield choice
    finally:
        if keepalive is not None:
            keepalive.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def describe_info(info: ServerInfo | None) -> dict[str, Any]:
    if info is None:
        return {"running": False, "home": str(prefect_home())}
    return {"running": True, "url": info.url, "ui": info.ui, "pid": info.pid, "port": info.port,
            "home": info.home, "log": info.log, "started_at": info.started_at,
            "stops_after_idle_minutes": info.idle_minutes or None}


if __name__ == "__main__":  # python -m assetferry.flows.server watch HOME PID IDLE_SECONDS
    if len(sys.argv) == 5 and sys.argv[1] == "watch":
        watch(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m assetferry.flows.server watch HOME PID IDLE_SECONDS")
