"""Shared helpers for the benchmarks: the simulator subprocess, child environments, /proc sampling.

Everything here talks only to 127.0.0.1 and cleans up what it starts (by process id / process
group of a process it started itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent  # the project (for cwd and imports)
MiB = 1024 * 1024

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assetferry.sandbox import kontent  # noqa: E402  (after the sys.path fix, for `python bench/x.py`)

ENV_ID = kontent.DEMO_ENVIRONMENT_ID
API_KEY = kontent.DEMO_API_KEY


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_client(timeout: float = 30.0) -> httpx.Client:
    """An httpx client that ignores proxy variables (we only ever talk to 127.0.0.1)."""
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False)


def child_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for product subprocesses: private Prefect home, offline, ephemeral Prefect."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # never a remote Prefect server: ephemeral, local only
    env.update({
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        # Ephemeral unless a bench asks for assetferry's local server (bench/fixedcost.py), which
        # would otherwise keep running after the temp home is gone.
        "ASSETFERRY_PREFECT_SERVER": "ephemeral",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def assetferry_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "assetferry"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("assetferry")
    if not found:
        raise SystemExit("assetferry CLI not found (activate /work/main/.venv)")
    return [found]


def start(cmd: list[str], *, env: dict[str, str] | None = None, stdout: Any = None,
          stderr: Any = None) -> subprocess.Popen:
    """Start a subprocess in its own session, so that it and any child it spawns (e.g. Prefect's
    ephemeral server) can be stopped together by its process group id."""
    return subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the process group we started (SIGTERM, then SIGKILL); harmless if already gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # leader gone; make sure nothing else of its group lingers
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that finally-blocks stop our subprocesses and remove temp dirs."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextmanager
def simulator(tmp: Path) -> Iterator[str]:
    """The Kontent.ai simulator as a subprocess with its default limits; yields its root URL
    (vendor base URL = root + "/v2")."""
    port = free_port()
    log = open(tmp / "simulator.log", "wb")
    proc = start([sys.executable, "-m", "assetferry.sandbox.server", "kontent", "--host", "127.0.0.1",
                  "--port", str(port)], env=child_env(tmp), stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        with local_client(2.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"simulator exited ({proc.returncode}); see {tmp / 'simulator.log'}")
                try:
                    client.get(f"{root}/_sandbox/stats").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("simulator did not answer within 30 s") from None
                    time.sleep(0.1)
        yield root
    finally:
        stop(proc)
        log.close()


def sim_stats(root: str, client: httpx.Client | None = None) -> dict[str, Any]:
    if client is None:
        with local_client() as c:
            return c.get(f"{root}/_sandbox/stats").json()
    return client.get(f"{root}/_sandbox/stats").json()


def sim_reset(root: str) -> None:
    with local_client() as c:
        c.post(f"{root}/_sandbox/reset").raise_for_status()
        c.post(f"{root}/_sandbox/limits", json={"per_second": 10, "per_minute": 400}).raise_for_status()


def write_job(tmp: Path, *, name: str, manifest: Path, root: str, batch_size: int = 50,
              concurrency: int = 2) -> Path:
    """A job YAML (JSON is valid YAML) for the simulator; the key comes from env KONTENT_API_KEY."""
    job = {
        "name": name,
        "source": {"url": str(manifest), "format": "csv"},
        "destination": {
            "vendor": "kontent",
            "url": f"{root}/v2",
            "credentials": {"api_key": "env:KONTENT_API_KEY"},
            "settings": {"environment_id": ENV_ID},
        },
        "state": str(tmp / "state"),
        "batch_size": batch_size,
        "concurrency": concurrency,
    }
    path = tmp / "job.yaml"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def parse_summary(stdout: str) -> dict[str, Any] | None:
    """The JSON summary `assetferry run --output json` prints (the last JSON object on stdout)."""
    decoder = json.JSONDecoder()
    found = None
    for i, ch in enumerate(stdout):
        if ch == "{" and (i == 0 or stdout[i - 1] == "\n"):
            try:
                obj, _ = decoder.raw_decode(stdout[i:])
            except ValueError:
                continue
            if isinstance(obj, dict) and "loaded" in obj:
                found = obj
    return found


# ---- /proc sampling (Linux) -------------------------------------------------------------------

def proc_mem(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes, or None when the process is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss = hwm = None
    for line in data.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    if rss is None or hwm is None:
        return None
    return rss, hwm


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every descendant of pid, found by scanning /proc/*/stat for parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces/parens -> split after the last ')'
        rest = stat[stat.rfind(b")") + 2:].split()
        if len(rest) >= 2:
            children.setdefault(int(rest[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def fmt_mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MiB:7.1f} MiB"
