"""Fixed cost of a `run` with nothing to send (ephemeral Prefect vs assetferry's reused local
server), and a job on a 2-worker local Dask cluster sharing the vendor's rate budget.

Usage: python bench/fixedcost.py [--repeats 3] [--assets 40] [--json-out FILE]
Figures, not assertions (issue 19 goal: fixed cost <= 4 s). Everything runs in a temp dir with its
own Prefect home; the local server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    ENV_ID,
    assetferry_cmd,
    child_env,
    exit_on_sigterm,
    free_port,
    parse_summary,
    sim_reset,
    sim_stats,
    simulator,
    start,
    stop,
)
from assetferry.connectors.core.budget import limit_name, plan
from assetferry.connectors.core.ratelimit import Window
from assetferry.flows import server

print = functools.partial(print, flush=True)  # progress lines as they come
PER_SECOND, PER_MINUTE = 10, 400  # the simulator's default limits (Kontent's documented ones)


def _manifest(folder: Path, n: int, prefix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        f = folder / f"{prefix}-{i:04d}.txt"
        f.write_bytes(f"asset {prefix} {i} ".encode() * 20)
        rows.append({"id": f"{prefix}-{i:04d}", "title": f"T {i}", "file": str(f), "language": "default"})
    path = folder / "manifest.csv"
    with path.open("w", newline="") as out:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _job(tmp: Path, name: str, manifest: Path, root: str, **extra: Any) -> Path:
    job = {"name": name, "source": {"url": str(manifest), "format": "csv"},
           "destination": {"vendor": "kontent", "url": f"{root}/v2", "credentials": {"api_key": "env:KONTENT_API_KEY"},
                           "settings": {"environment_id": ENV_ID, "requests_per_second": PER_SECOND,
                                        "requests_per_minute": PER_MINUTE}},
           "state": str(tmp / name / "state"), "batch_size": 8, "concurrency": 2, **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(job))
    return path


def _run(job: Path, env: dict[str, str], *args: str) -> tuple[float, dict[str, Any], str]:
    t = time.monotonic()
    log = job.with_suffix(".err")
    with open(log, "w") as err:
        proc = start([*assetferry_cmd(), "run", str(job), "--output", "json", *args], env=env,
                     stdout=subprocess.PIPE, stderr=err)
        try:
            stdout, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            stop(proc)  # its process group: Dask workers included
            raise RuntimeError(f"run timed out after 300 s: {log.read_text()[-3000:]}") from None
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.decode(), log.read_text())
    wall = time.monotonic() - t
    summary = parse_summary(out.stdout)
    if summary is None:
        raise RuntimeError(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, summary, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--assets", type=int, default=40, help="rows of the Dask job")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    exit_on_sigterm()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="assetferry-bench-fixed-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "prefect-home"
        env_eph = child_env(tmp, KONTENT_API_KEY=API_KEY, ASSETFERRY_PREFECT_SERVER="ephemeral")
        env_local = child_env(tmp, KONTENT_API_KEY=API_KEY, ASSETFERRY_PREFECT_SERVER="local",
                              ASSETFERRY_PREFECT_PORT=str(free_port()))
        try:
            with simulator(tmp) as root:
                sim_reset(root)
                job = _job(tmp, "noop", _manifest(tmp / "files", 20, "N"), root)
                _run(job, env_eph)  # loads the 20 rows (and migrates the Prefect database)
                print(f"fixed cost of a `run` with nothing to send (20 rows, all unchanged; median of {a.repeats})")
                eph = [_run(job, env_eph) for _ in range(a.repeats)]
                first = _run(job, env_local)
                reused = [_run(job, env_local) for _ in range(a.repeats)]
                med = {k: statistics.median(w for w, _, _ in v) for k, v in (("ephemeral", eph), ("reused", reused))}
                body = statistics.median(s["seconds"] for _, s, _ in reused)
                figures.update(noop_ephemeral_s=med["ephemeral"], noop_first_use_s=first[0], noop_reused_s=med["reused"],
                               noop_flow_body_s=body, noop_reused_over_ephemeral=med["reused"] / med["ephemeral"])
                print(f"  ephemeral Prefect (before):                  {med['ephemeral']:6.2f} s")
                print(f"  local server, first use (starts it):         {first[0]:6.2f} s")
                print(f"  local server, reused (after):                {med['reused']:6.2f} s "
                      f"(flow body {body:.2f} s)")
                print(f"  ratio reused / ephemeral:                    {med['reused'] / med['ephemeral']:6.2f}   "
                      f"goal: <= 4 s: {'PASS' if med['reused'] <= 4 else 'MISS'}")

                print(f"\n{a.assets} assets ({2 * a.assets} requests) at {PER_SECOND}/s and {PER_MINUTE}/min, "
                      "batches of 8, concurrency 2")
                budget = plan(limit_name("kontent", ENV_ID), [Window(PER_SECOND, 1.0), Window(PER_MINUTE, 60.0)],
                              min_interval=1 / PER_SECOND)
                assert budget is not None
                rows: dict[str, tuple[float, dict[str, Any], dict[str, Any]]] = {}
                for label, extra, args in (("threads, local limiter", {}, ()),
                                           ("dask 2 workers, shared budget", {}, ("--runner", "dask")),
                                           ("dask 2 workers, no shared budget", {"shared_budget": False},
                                            ("--runner", "dask"))):
                    sim_reset(root)
                    name = "dask" + str(len(rows))
                    j = _job(tmp, name, _manifest(tmp / name, a.assets, name.upper()), root, **extra)
                    wall, summary, _ = _run(j, env_local, *args)
                    rows[label] = (wall, summary, sim_stats(root))
                for label, (wall, summary, stats) in rows.items():
                    rate = stats["accepted"] / summary["seconds"]
                    print(f"  {label:34s} wall {wall:5.1f} s, flow {summary['seconds']:5.1f} s, "
                          f"{stats['accepted']} accepted ({rate:4.1f}/s over the flow), "
                          f"{stats['throttled']} x 429, loaded {summary['loaded']}")
                    figures[f"dask_{label}"] = {"wall_s": wall, "flow_s": summary["seconds"], "accepted":
                                                stats["accepted"], "throttled": stats["throttled"],
                                                "loaded": summary["loaded"]}
                t_wall = rows["threads, local limiter"][1]["seconds"]
                d_wall = rows["dask 2 workers, shared budget"][1]["seconds"]
                print(f"  shared budget: blocks of {budget.block} at {budget.rate:.2f}/s "
                      f"({budget.rate / min(PER_SECOND, PER_MINUTE / 60):.2f} of the binding limit); "
                      f"flow time dask / threads: {d_wall / t_wall:.2f}")
                figures["budget_rate"] = budget.rate
        finally:
            server.stop(home)
    if a.json_out:
        a.json_out.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
