"""Peak RSS while uploading a 90 MB file to the Kontent.ai simulator.

Three processes, each sampled from this (parent) process every 20 ms via /proc/<pid>/status
(VmRSS, and VmHWM = the kernel's own peak RSS, read at every sample so the last value before
exit is kept):

  1. floor:   python -c "import prefect, pandas, assetferry.flows.sync; import time; time.sleep(1)"
  2. product: assetferry run job.yaml --output json   (plus, separately, its child processes,
              e.g. Prefect's ephemeral API server)
  3. bare:    one httpx.Client().post(url, content=<open file>) in its own python process

The simulator runs as its own subprocess (its memory, which holds the uploaded bytes, is not
counted). A thread polls the simulator's /_sandbox/stats every 50 ms to see when the upload
request arrives and when its bytes are all in, which brackets "during the upload".

Usage: python bench/memory.py [--mb 90] [--json-out FILE]
Figures, not assertions: the goal lines say PASS or MISS and the script exits 0 either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    API_KEY, ENV_ID, MiB, assetferry_cmd, child_env, descendants, exit_on_sigterm, fmt_mb,
    local_client, parse_summary, proc_cmdline, proc_mem, sim_reset, sim_stats, simulator, start, stop, write_job,
)

INTERVAL = 0.02
GOAL_PEAK = 150 * MiB
ROADMAP_GROWTH = 64 * MiB

BARE_UPLOAD = r"""
import json, os, sys
def mem():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out
import httpx
url, path = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
before = mem()
with httpx.Client(trust_env=False, timeout=httpx.Timeout(120.0, connect=5.0)) as client, open(path, "rb") as f:
    r = client.post(url, content=f, headers={
        "Content-Length": str(size), "Content-Type": "application/octet-stream",
        "Authorization": "Bearer " + os.environ["KONTENT_API_KEY"]})
after = mem()
print(json.dumps({"status": r.status_code, "before_rss": before["VmRSS"],
                  "after_rss": after["VmRSS"], "after_hwm": after["VmHWM"]}), flush=True)
"""


class UploadWatch(threading.Thread):
    """Polls the simulator: when did the first request arrive, when were all bytes received."""

    def __init__(self, root: str, size: int) -> None:
        super().__init__(daemon=True)
        self.root, self.size = root, size
        self.stop_event = threading.Event()
        self.last_idle: float | None = None  # last poll that saw no request yet
        self.started: float | None = None  # first poll that saw the upload request
        self.done: float | None = None  # first poll that saw all bytes
        self.final: dict[str, Any] = {}

    def run(self) -> None:
        with local_client(5.0) as client:
            while not self.stop_event.is_set():
                t = time.monotonic()
                try:
                    s = sim_stats(self.root, client)
                except Exception:  # noqa: BLE001 - a missed poll only widens the bracket
                    time.sleep(0.05)
                    continue
                if s["requests"] == 0:
                    self.last_idle = t
                elif self.started is None:
                    self.started = t
                if self.done is None and s["bytes_uploaded"] >= self.size:
                    self.done = t
                self.final = s
                time.sleep(0.05)


def measure(proc: subprocess.Popen, timeout: float, with_children: bool = False) -> dict[str, Any]:
    """Sample proc (and its descendants) until it exits or timeout; kill it on timeout."""
    samples: list[tuple[float, int, int]] = []  # (time, VmRSS, VmHWM)
    kids: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        _sample_loop(proc, samples, kids, deadline, with_children)
    except TimeoutError:
        timed_out = True
    finally:  # also on SIGTERM/Ctrl-C: stop the process group we started
        stop(proc, grace=10 if timed_out else 5)
    hwm = max((h for _, _, h in samples), default=0)
    return {"samples": [(t, r) for t, r, _ in samples], "hwm": hwm,
            "peak_sampled": max((r for _, r, _ in samples), default=0),
            "children": kids, "timed_out": timed_out, "returncode": proc.returncode}


def _sample_loop(proc: subprocess.Popen, samples: list[tuple[float, int, int]], kids: dict[int, dict[str, Any]],
                 deadline: float, with_children: bool) -> None:
    i = 0
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError
        m = proc_mem(proc.pid)
        if m:
            samples.append((now, m[0], m[1]))
        if with_children:
            if i % 5 == 0:  # scanning /proc is dearer: every 100 ms
                for pid in descendants(proc.pid):
                    kids.setdefault(pid, {"cmd": proc_cmdline(pid), "peak_rss": 0, "hwm": 0})
            for pid, info in kids.items():
                km = proc_mem(pid)
                if km:
                    info["peak_rss"] = max(info["peak_rss"], km[0])
                    info["hwm"] = max(info["hwm"], km[1])
        i += 1
        time.sleep(INTERVAL)


def rss_at(samples: list[tuple[float, int]], t: float | None) -> int | None:
    """RSS of the last sample taken at or before t."""
    if t is None:
        return None
    best = None
    for ts, rss in samples:
        if ts <= t:
            best = rss
        else:
            break
    return best


def max_between(samples: list[tuple[float, int]], t0: float | None, t1: float | None) -> int | None:
    if t0 is None or t1 is None:
        return None
    vals = [r for ts, r in samples if t0 <= ts <= t1 + 0.1]
    return max(vals) if vals else None


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def measure_product(root: str, size: int, job: Path, env: dict[str, str], tmp: Path,
                    label: str) -> dict[str, Any]:
    """``assetferry run`` on the one-row job: peak RSS, RSS across the upload, children."""
    sim_reset(root)
    watch = UploadWatch(root, size)
    watch.start()
    out_path, err_path = tmp / f"{label}.out", tmp / f"{label}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        prod = measure(start([*assetferry_cmd(), "run", str(job), "--output", "json"], env=env,
                             stdout=out, stderr=err), 300, with_children=True)
        wall = time.monotonic() - t0
    time.sleep(0.2)
    watch.stop_event.set()
    watch.join(5)
    summary = parse_summary(out_path.read_text(encoding="utf-8", errors="replace"))
    if summary is None or prod["returncode"] != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        print(f"!! assetferry run exited {prod['returncode']}; stderr tail:\n{tail}", flush=True)
    return {
        "hwm": max(prod["hwm"], prod["peak_sampled"]),
        "rss_before_upload": rss_at(prod["samples"], watch.last_idle),
        "max_rss_during_upload": max_between(prod["samples"], watch.last_idle, watch.done),
        "wall_seconds": wall, "returncode": prod["returncode"],
        "timed_out": prod["timed_out"], "summary": summary,
        "sim_bytes_uploaded": watch.final.get("bytes_uploaded"),
        "sim_uploads": watch.final.get("uploads"), "sim_throttled": watch.final.get("throttled"),
        "children": [{"pid": pid, "cmd": c["cmd"][:120], "hwm": max(c["hwm"], c["peak_rss"])}
                     for pid, c in prod["children"].items()],
    }


@contextmanager
def prefect_server(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    """``prefect server start`` on a free loopback port; yields its API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 env=dict(env, PREFECT_UI_ENABLED="false"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        with local_client(5) as client:
            while True:
                try:
                    if client.get(f"{api}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("prefect server did not start")
                time.sleep(0.5)
        yield api
    finally:
        stop(proc)


def report_product(p: dict[str, Any], size: int, title: str) -> None:
    print(title)
    if p["summary"]:
        s = p["summary"]
        print(f"   summary: loaded={s['loaded']} failed={s['failed']} rejected={s['rejected']} "
              f"bytes_sent={s['bytes_sent']} load seconds={s['seconds']:.1f}; exit {p['returncode']}; "
              f"wall {p['wall_seconds']:.1f}s")
    print(f"   simulator received        {p['sim_bytes_uploaded']} bytes in {p['sim_uploads']} upload(s)"
          f" ({'== file size' if p['sim_bytes_uploaded'] == size else '!= file size'}), "
          f"throttled {p['sim_throttled']}")
    print(f"   peak RSS (VmHWM)          {fmt_mb(p['hwm'])}")
    print(f"   growth vs floor           {fmt_mb(p['growth_vs_floor'])}   "
          "(peak minus run 1's import floor: an upper bound on upload growth, since it also")
    print("                             counts Prefect's run-time state: flow engine, API client, logs)")
    print(f"   RSS when upload began     {fmt_mb(p['rss_before_upload'])}   max during upload "
          f"{fmt_mb(p['max_rss_during_upload'])}   (bracketed by polling the simulator every 50 ms)")
    if p["rss_before_upload"] and p["max_rss_during_upload"]:
        print(f"   growth during upload      {fmt_mb(p['max_rss_during_upload'] - p['rss_before_upload'])}")
    for c in p["children"]:
        print(f"   child pid {c['pid']} peak RSS {fmt_mb(c['hwm'])}  ({c['cmd']})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=90, help="file size in MiB (default 90)")
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--no-server", dest="server", action="store_false",
                        help="skip the run against a real `prefect server` (2b)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    tmp = Path(tempfile.mkdtemp(prefix="assetferry-bench-mem-"))
    figures: dict[str, Any] = {"file_bytes": args.mb * MiB}
    try:
        size = args.mb * MiB
        big = tmp / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(MiB))
        manifest = tmp / "manifest.csv"
        manifest.write_text("id,title,description,file\nbig-1,Big file,random bytes,big.bin\n", encoding="utf-8")
        print(f"memory bench: {args.mb} MiB random file in {tmp} (MiB = 1024*1024 bytes)", flush=True)

        with simulator(tmp) as root:
            job = write_job(tmp, name="bench-memory", manifest=manifest, root=root)
            env = child_env(tmp, KONTENT_API_KEY=API_KEY)

            # 1. the floor: imports only
            floor_run = measure(start([sys.executable, "-c",
                                       "import prefect, pandas, assetferry.flows.sync; import time; time.sleep(1)"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), 120)
            floor = max(floor_run["hwm"], floor_run["peak_sampled"])
            floor_last = floor_run["samples"][-1][1] if floor_run["samples"] else None
            figures["floor"] = {"hwm": floor, "last_rss": floor_last, "returncode": floor_run["returncode"]}

            # 2. the product, ephemeral Prefect (a CLI user with no server)
            figures["product"] = measure_product(root, size, job, env, tmp, "run")
            # 2b. the product against a real Prefect server (deployments, scheduled runs)
            if args.server:
                # its own job name, hence its own ledger: the file must be uploaded again
                job2 = write_job(tmp, name="bench-memory-server", manifest=manifest, root=root)
                with prefect_server(tmp, env) as api:
                    figures["product_server"] = measure_product(
                        root, size, job2, dict(env, PREFECT_API_URL=api), tmp, "run-server")
                    figures["product_server"]["growth_vs_floor"] = figures["product_server"]["hwm"] - floor
            figures["product"]["growth_vs_floor"] = figures["product"]["hwm"] - floor

            # 3. bare httpx upload
            sim_reset(root)
            watch = UploadWatch(root, size)
            watch.start()
            url = f"{root}/v2/projects/{ENV_ID}/files/big.bin"
            bare_out = tmp / "bare.out"
            with open(bare_out, "wb") as out:
                bare = measure(start([sys.executable, "-c", BARE_UPLOAD, url, str(big)], env=env,
                                     stdout=out, stderr=subprocess.STDOUT), 120)
            time.sleep(0.2)
            watch.stop_event.set()
            watch.join(5)
            try:
                bare_report = json.loads(bare_out.read_text().strip().splitlines()[-1])
            except (ValueError, IndexError):
                bare_report = {}
                print(f"!! bare upload output: {bare_out.read_text()[-1000:]}", flush=True)
            b_peak = max(bare["hwm"], bare["peak_sampled"], bare_report.get("after_hwm", 0))
            b_before = bare_report.get("before_rss")
            figures["bare"] = {
                "hwm": b_peak, "rss_before_upload": b_before,
                "growth": (b_peak - b_before) if b_before else None,
                "status": bare_report.get("status"), "returncode": bare["returncode"],
                "sim_bytes_uploaded": watch.final.get("bytes_uploaded"),
            }

        # ---- report -------------------------------------------------------------------------
        p, b, fl = figures["product"], figures["bare"], figures["floor"]
        print()
        print(f"== peak RSS while uploading a {args.mb} MiB file ({size} bytes) ==")
        print("1. floor (import prefect, pandas, assetferry.flows.sync; sleep 1)")
        print(f"   RSS after imports        {fmt_mb(fl['last_rss'])}   peak (VmHWM) {fmt_mb(fl['hwm'])}")
        report_product(p, size, "2. product: assetferry run job.yaml --output json (ephemeral Prefect)")
        if not p["children"]:
            print("   (no child process seen: Prefect's ephemeral server ran in-process or was not sampled)")
        if "product_server" in figures:
            report_product(figures["product_server"], size,
                           "2b. product against a real Prefect server (PREFECT_API_URL set; deployments)")
        print("3. bare httpx upload (own python process)")
        print(f"   status {b['status']}; simulator received {b['sim_bytes_uploaded']} bytes "
              f"({'== file size' if b['sim_bytes_uploaded'] == size else '!= file size'})")
        print(f"   RSS before upload         {fmt_mb(b['rss_before_upload'])}   peak (VmHWM) {fmt_mb(b['hwm'])}"
              f"   growth {fmt_mb(b['growth'])}")
        print()
        print(f"goal: peak < 150 MB for the whole process       {fmt_mb(p['hwm'])}  {mark(p['hwm'] < GOAL_PEAK)}")
        if "product_server" in figures:
            ps = figures["product_server"]
            print(f"goal, with a Prefect server (deployments)       {fmt_mb(ps['hwm'])}  {mark(ps['hwm'] < GOAL_PEAK)}")
        print(f"roadmap: growth <= 64 MB (peak - import floor)   {fmt_mb(p['growth_vs_floor'])}  "
              f"{mark(p['growth_vs_floor'] <= ROADMAP_GROWTH)}")
        if p["rss_before_upload"] and p["max_rss_during_upload"]:
            g = p["max_rss_during_upload"] - p["rss_before_upload"]
            print(f"   (growth measured across the upload itself:    {fmt_mb(g)}  {mark(g <= ROADMAP_GROWTH)})")
        print(f"   (import floor alone: {fmt_mb(fl['hwm'])} -> the 150 MB goal is "
              f"{'already exceeded by imports' if fl['hwm'] >= GOAL_PEAK else 'above the import floor'})",
              flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
