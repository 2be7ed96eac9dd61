"""One run per job and destination at a time, whatever started it (CLI, deployment, Python)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import fsspec

from assetferry.connectors.core.errors import AssetferryError


class JobBusy(AssetferryError):
    """Another run of the same job and destination holds the lock. The message says which run,
    where and since when."""


class RunLock:
    """A lock in the job's state folder, held for the whole run.

    Local state: an ``flock`` on ``<state>/lock``; the kernel releases it when the process dies,
    even on SIGKILL, so a killed run never blocks the next one. Object-store state (no locks
    there): a lease object ``lock.json`` naming its owner, renewed every ``stale_seconds / 3`` by
    a background thread and taken over once it is older than ``stale_seconds`` (a killed run's).
    A second run waits up to ``wait_seconds`` (polling), then raises ``JobBusy``.
    """

    def __init__(self, url: str, run_id: str, storage_options: dict[str, Any] | None = None, *,
                 wait_seconds: float = 0.0, stale_seconds: float = 300.0, poll: float = 1.0) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(url.rstrip("/"), **(storage_options or {}))
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.run_id = run_id
        self.wait_seconds, self.stale_seconds, self.poll = wait_seconds, stale_seconds, poll
        self.owner = {"run": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._file: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _busy(self, holder: dict[str, Any] | None) -> JobBusy:
        who = (f"run {holder.get('run')} on {holder.get('host')} (pid {holder.get('pid')}), started "
               f"{holder.get('started')}") if holder else "another run"
        return JobBusy(f"this job is already running: {who}; wait for it to finish (or set "
                       "lock_wait_seconds in the job to wait)")

    def acquire(self) -> RunLock:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            holder = self._try_local() if self.local else self._try_lease()
            if holder is None:
                return self
            if time.monotonic() >= deadline:
                raise self._busy(holder)
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    # -- local: flock ---------------------------------------------------------------------
    def _try_local(self) -> dict[str, Any] | None:
        os.makedirs(self.root, exist_ok=True)
        path = os.path.join(self.root, "lock")
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read()
            handle.close()
            try:
                return json.loads(text) if text.strip() else {}
            except ValueError:
                return {}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(self.owner))
        handle.flush()
        self._file = handle
        return None

    # -- object stores: a lease -----------------------------------------------------------
    def _lease_path(self) -> str:
        return f"{self.root}/lock.json"

    def _read_lease(self) -> dict[str, Any] | None:
        self.fs.invalidate_cache()
        try:
            return json.loads(self.fs.cat_file(self._lease_path()))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _write_lease(self) -> None:
        data = {**self.owner, "renewed": time.time()}
        self.fs.pipe_file(self._lease_path(), json.dumps(data).encode())

    def _try_lease(self) -> dict[str, Any] | None:
        holder = self._read_lease()
        fresh = holder is not None and time.time() - float(holder.get("renewed", 0)) < self.stale_seconds
        if fresh and holder.get("run") != self.run_id:
            return holder
        self._write_lease()
        time.sleep(0.2)  # a racing writer's lease lands in this window: read back who won
        again = self._read_lease()
        if again is None or again.get("run") != self.run_id:
            return again or {}
        self._renewer = threading.Thread(target=self._renew, name="assetferry-lock", daemon=True)
        self._renewer.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.stale_seconds / 3):
            try:
                self._write_lease()
            except Exception:  # noqa: BLE001 - a missed renewal only shortens the lease
                pass

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # releases the flock; the file stays (its content is informative)
            self._file = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join(timeout=5)
            self._renewer = None
            holder = self._read_lease()
            if holder and holder.get("run") == self.run_id:
                self.fs.rm(self._lease_path())

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
