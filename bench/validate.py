"""``assetferry validate`` on a large manifest: wall time, CPU per row and peak RSS.

Generates, in a temp dir, ``--rows`` rows (default 1,000,000) as CSV and as Parquet whose ``file``
column points at ``--files`` (default 300) real small files under the manifest's folder (so many
rows share one file, as in real catalogues), then runs ``python -m assetferry validate JOB
--output json --no-check-vendor`` on each as a subprocess (a Kontent.ai job; no vendor is
contacted) and prints, per format:

- wall seconds, CPU seconds (user + sys of the child, from ``wait4``) and CPU µs per row;
- peak RSS (the child's ``VmHWM``, sampled from ``/proc`` every 20 ms, and ``ru_maxrss``);
- rows read / would upload / rejected from the JSON summary (a check that the run did the work).

Goal (issue 19): <= 15 s and <= 500 MB at 1M rows, each followed by PASS or MISS. Figures, not
assertions: exits 0 either way. ``--json-out FILE`` saves the figures.

Usage: python bench/validate.py [--rows 1000000] [--files 300] [--formats csv,parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GOAL_SECONDS = 15.0
GOAL_RSS = 500 * MiB


def make_manifest(folder: Path, rows: int, files: int, seed: int = 7) -> dict[str, Path]:
    """``files`` small files under ``folder/files`` and a ``rows``-row manifest as CSV and Parquet."""
    (folder / "files").mkdir(parents=True, exist_ok=True)
    for k in range(files):
        (folder / "files" / f"img-{k:04d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64 + k % 200))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, files, rows)
    ids = pd.Series(np.arange(rows)).map("SKU-{:07d}".format)
    frame = pd.DataFrame({
        "id": ids,
        "title": "Product " + ids.str[4:],
        "description": np.where(rng.random(rows) < 0.7, "A product shot, studio light", ""),
        "file": pd.Series(pick).map("files/img-{:04d}.png".format),
        "tags": np.array(["kettle|red|catalog", "mug|blue", "", "lamp"], dtype=object)[rng.integers(0, 4, rows)],
        "category": "product",
        "language": np.array(["en-US", "default", "es-ES"], dtype=object)[rng.integers(0, 3, rows)],
        "updated_at": (pd.Timestamp("2026-01-01", tz="UTC")
                       + pd.to_timedelta(rng.integers(0, 86400 * 300, rows), unit="s")).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    out = {"csv": folder / "manifest.csv", "parquet": folder / "manifest.parquet"}
    frame.to_csv(out["csv"], index=False)
    frame.to_parquet(out["parquet"], index=False, row_group_size=100_000)
    return out


def write_job(folder: Path, manifest: Path, fmt: str) -> Path:
    job = {
        "name": f"bench-validate-{fmt}",
        "source": {"url": str(manifest), "format": fmt},
        "destination": {"vendor": "kontent", "url": "http://127.0.0.1:9/v2",
                        "credentials": {"api_key": "env:ASSETFERRY_BENCH_NO_SUCH_KEY"},
                        "settings": {"environment_id": "00000000-0000-0000-0000-000000000001",
                                     "languages": ["default", "en-US", "es-ES"]}},
        "state": str(folder / "state"),
    }
    path = folder / f"job-{fmt}.yaml"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def _hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_validate(job: Path, rows: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "ASSETFERRY_BENCH_NO_SUCH_KEY"}
    cmd = [sys.executable, "-m", "assetferry", "validate", str(job), "--output", "json", "--no-check-vendor"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            value = _hwm(proc.pid)
            if value:
                peak[0] = max(peak[0], value)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    reader.join()
    sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    stdout = b"".join(out_chunks).decode("utf-8", "replace")
    try:
        summary = json.loads(stdout)
    except ValueError:
        summary = {}
    return {"exit_code": proc.returncode, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_us_per_row": round(cpu / rows * 1e6, 2),
            "peak_rss_mb": round(max(peak[0], usage.ru_maxrss * 1024) / MiB, 1),
            "rows_read": summary.get("rows_read"), "would": summary.get("would"),
            "rejected": summary.get("rejected"),
            "stderr_tail": stderr.decode("utf-8", "replace")[-400:] if proc.returncode not in (0, 1) else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--formats", default="csv,parquet")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it (reused if present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="assetferry-bench-validate-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifests = {"csv": folder / "manifest.csv", "parquet": folder / "manifest.parquet"}
        marker = folder / f".rows-{args.rows}-{args.files}"
        if not marker.exists():
            manifests = make_manifest(folder, args.rows, args.files)
            marker.touch()
        print(f"manifest: {args.rows:,} rows, {args.files} files, generated in {time.perf_counter() - t0:.1f}s "
              f"(csv {manifests['csv'].stat().st_size / MiB:.0f} MiB, "
              f"parquet {manifests['parquet'].stat().st_size / MiB:.0f} MiB)", flush=True)
        figures: dict[str, Any] = {"rows": args.rows, "files": args.files}
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            result = run_validate(write_job(folder, manifests[fmt], fmt), args.rows)
            figures[fmt] = result
            ok_time = "PASS" if result["wall_s"] <= GOAL_SECONDS else "MISS"
            ok_rss = "PASS" if result["peak_rss_mb"] * MiB <= GOAL_RSS else "MISS"
            print(f"{fmt:8s} validate: {result['wall_s']:6.1f} s wall ({ok_time} <= {GOAL_SECONDS:g} s), "
                  f"{result['cpu_s']:6.1f} s CPU = {result['cpu_us_per_row']:5.1f} µs/row, "
                  f"peak RSS {result['peak_rss_mb']:6.0f} MB ({ok_rss} <= {GOAL_RSS // MiB} MB); "
                  f"exit {result['exit_code']}, read {result['rows_read']}, would {result['would']}, "
                  f"rejected {result['rejected']}", flush=True)
            if result["stderr_tail"]:
                print("  stderr: " + result["stderr_tail"])
        if args.json_out:
            args.json_out.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
