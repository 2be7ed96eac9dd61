"""Ledger at scale: bytes per entry, load time and memory, compaction time, lookups.

Usage: python bench/ledger.py [--entries 1000000] [--json-out FILE]
Builds a ledger of N entries shaped like a Kontent.ai run (id, status, 16-hex hash and fingerprint,
two UUIDs, run, time), then in fresh subprocesses (so RSS is the ledger's alone):
- the first compaction of one run's N journal lines into a Parquet segment;
- ``Ledger.load()`` of the N-entry ledger: seconds, RSS growth, bytes per entry (RSS, Arrow, disk);
- ``get_many`` for a 50-row batch (the flow's per-batch lookup);
- the compaction after a run that sent nothing (goal: writes nothing) and after a run of 1,000 changes.
Goal (issue 11): load <= 2 s and <= 150 MB at 1M entries. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from assetferry.connectors.core.ledger import Ledger
import pyarrow, pandas, numpy  # imported before the baseline
ledger = Ledger({state!r})
before = rss()
t = time.perf_counter()
index = ledger.load()
seconds = time.perf_counter() - t
after = rss()
ids = [f"SKU-{{i:07d}}" for i in range(0, {n}, max(1, {n} // 50))][:50]
t = time.perf_counter()
for _ in range(20):
    found = index.get_many(ids)
lookup = (time.perf_counter() - t) / 20
print(json.dumps({{"seconds": seconds, "rss_growth": after - before, "entries": len(index),
                  "arrow_bytes": index.table.nbytes, "lookup_50": lookup, "found": len(found)}}))
"""


def build(state: Path, n: int, run: str) -> None:
    """One run's journal of N 'loaded' lines (written directly: the writer's own speed is
    measured separately on a sample)."""
    journal = state / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    with (journal / f"{run}-b000000.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({
                "id": f"SKU-{i:07d}", "status": "loaded", "hash": f"{i:016x}",
                "file_hash": uuid.uuid4().hex[:16], "vendor_id": str(uuid.uuid4()), "file_ref": str(uuid.uuid4()),
                "run": run, "at": f"2026-11-23T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}000+00:00",
            }, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    n = args.entries
    from assetferry.connectors.core.ledger import Ledger, entry

    figures: dict[str, object] = {"entries": n}
    with tempfile.TemporaryDirectory(prefix="assetferry-bench-ledger-") as tmp:
        state = Path(tmp) / "state"
        t = time.perf_counter()
        build(state, n, "20261123T100000000000-aaaaaa")
        print(f"built {n:,} journal lines in {time.perf_counter() - t:.1f}s "
              f"({sum(p.stat().st_size for p in (state / 'journal').iterdir()) / n:.0f} bytes/line)")

        ledger = Ledger(str(state))
        t = time.perf_counter()
        written = ledger.compact(["20261123T100000000000-aaaaaa"])
        figures["first_compaction_s"] = time.perf_counter() - t
        segment = sum(p.stat().st_size for p in (state / "segments").iterdir())
        figures["disk_bytes_per_entry"] = segment / n
        print(f"first compaction: {written:,} entries in {figures['first_compaction_s']:.2f}s; "
              f"segment {segment / 2**20:.1f} MiB = {segment / n:.1f} bytes/entry on disk")

        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(HERE.parent), state=str(state), n=n)],
                             capture_output=True, text=True, check=True)
        load = json.loads(out.stdout)
        figures["load"] = load
        print(f"load: {load['entries']:,} entries in {load['seconds']:.2f}s, RSS +{load['rss_growth'] / 2**20:.1f} MiB "
              f"({load['rss_growth'] / n:.0f} bytes/entry; Arrow {load['arrow_bytes'] / n:.0f} bytes/entry)  "
              f"goal <= 2 s: {'PASS' if load['seconds'] <= 2 else 'MISS'}, <= 150 MB: "
              f"{'PASS' if load['rss_growth'] <= 150e6 else 'MISS'}")
        print(f"lookup of a 50-row batch: {load['lookup_50'] * 1000:.2f} ms ({load['found']} found)")

        t = time.perf_counter()
        nothing = ledger.compact(["20261123T110000000000-bbbbbb"])
        figures["noop_compaction_s"] = time.perf_counter() - t
        print(f"compaction after a run that sent nothing: {nothing} entries written in "
              f"{figures['noop_compaction_s'] * 1000:.1f} ms")

        run = "20261123T120000000000-cccccc"
        t = time.perf_counter()
        with ledger.writer(run, 0) as w:
            for i in range(1000):
                w.record(entry(f"SKU-{i * 7:07d}", "loaded", run, hash="changed"))
        per_line = (time.perf_counter() - t) / 1000
        t = time.perf_counter()
        changed = ledger.compact([run])
        figures["incremental_compaction_s"] = time.perf_counter() - t
        figures["journal_line_us"] = per_line * 1e6
        print(f"journal: {per_line * 1e6:.0f} µs per line (flushed); compaction of a 1,000-change run: "
              f"{changed} entries in {figures['incremental_compaction_s'] * 1000:.0f} ms (the {n:,}-entry "
              "segment is not rewritten)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
