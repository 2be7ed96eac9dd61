"""Run every benchmark and print their figures, then a short recap: memory, rate, throughput
(assetferry vs a bare httpx loop, Prefect's share, the limiter's share at 0 and 150 ms RTT),
validate on 1M rows, and fixedcost (a no-op run: ephemeral vs the reused local server; Dask).

Usage: python bench/run.py [--quick] [--only memory,rate,throughput,validate,fixedcost]
  --quick   smaller runs: rate with 60 assets (too short for a full 60 s window, so it reports
            average rates instead of the per-minute share), throughput with 500 assets,
            validate with 200k rows, fixedcost with one repeat
Each benchmark runs as its own subprocess (so one's memory or failure cannot skew the other).
Figures, not assertions: exits 0 when both benchmarks ran, whatever PASS/MISS they print.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, args: list[str], timeout: float) -> tuple[int, dict | None]:
    with tempfile.TemporaryDirectory(prefix="assetferry-bench-run-") as tmp:
        out = Path(tmp) / "figures.json"
        print(f"\n$ python bench/{script} {' '.join(args)}", flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / script), *args, "--json-out", str(out)],
                                cwd=str(HERE.parent))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the benchmark's finally-blocks stop its own subprocesses and temp dirs
            print(f"!! bench/{script} exceeded {timeout:.0f}s; stopping it", flush=True)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 124, None
        figures = json.loads(out.read_text()) if out.exists() else None
        return code, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", default="memory,rate,throughput,validate,fixedcost")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))

    mem_code, mem = _run("memory.py", [], timeout=600) if "memory" in only else (0, None)
    rate_args = ["--assets", "60"] if args.quick else []
    rate_code, rate = _run("rate.py", rate_args, timeout=900) if "rate" in only else (0, None)
    others = {}
    for name, full, quick in (("throughput", [], ["--assets", "500"]),
                              ("validate", [], ["--rows", "200000"]),
                              ("fixedcost", [], ["--repeats", "1"])):
        if name in only:
            others[name] = _run(f"{name}.py", quick if args.quick else full, timeout=1200)

    MiB = 1024 * 1024
    print("\n== recap ==")
    if mem:
        p, b, fl = mem["product"], mem["bare"], mem["floor"]
        print(f"memory: assetferry peak {p['hwm'] / MiB:.1f} MiB (goal < 150), import floor {fl['hwm'] / MiB:.1f} MiB, "
              f"peak - floor {p['growth_vs_floor'] / MiB:.1f} MiB (roadmap <= 64)"
              + (f", growth across the upload {(p['max_rss_during_upload'] - p['rss_before_upload']) / MiB:.1f} MiB"
                 if p.get("max_rss_during_upload") and p.get("rss_before_upload") else "")
              + (f"; bare httpx peak {b['hwm'] / MiB:.1f} MiB" if b.get("hwm") else ""))
    else:
        print(f"memory: no figures (exit {mem_code})")
    if rate:
        a = rate["assetferry"]["analysis"]
        thr = rate["assetferry"]["stats"]["throttled"]
        if "mean" in a:
            print(f"rate: assetferry mean 60 s window {a['mean']:.1f}/400 ({a['mean'] / 400:.1%}), "
                  f"min {a['min']:.0f}, max {a['max']:.0f}, {thr} throttled (goal >= 95%, 0 throttled)")
        elif a.get("avg_per_second"):
            print(f"rate: assetferry {a['avg_per_second']:.2f} req/s average (no full 60 s window), {thr} throttled")
        if rate.get("ratio") is not None:
            print(f"rate: assetferry / bare httpx = {rate['ratio']:.3f}")
    elif "rate" in only:
        print(f"rate: no figures (exit {rate_code})")
    for name, (code, figures) in others.items():
        # each script printed its own figures above; here one line each for the record
        print(f"{name}: " + (json.dumps(figures, default=str)[:2000] if figures else f"no figures (exit {code})"))
    ran = [mem, rate] if {"memory", "rate"} <= only else []
    return 0 if all(ran) and all(f for _, f in others.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
