"""Share of Kontent.ai's 400 requests/min that assetferry achieves, with zero 429.

The simulator runs as a subprocess with its default limits (10 requests/s and 400 requests/min,
sliding windows). N small files + a CSV manifest + a job (batch_size 50, concurrency 2) are
generated in a temp dir; `assetferry run job.yaml --output json` loads them (2 requests per
asset: upload + upsert) while this script polls /_sandbox/stats every 0.5 s for the accepted
count. From those samples: the accepted requests in every 60 s window fully inside the loading
period (first to last accepted request), stepping 1 s -> min/mean/max, each as a share of 400.

Then, after /_sandbox/reset, a bare httpx loop sends the same uploads + upserts sequentially,
sleeping a fixed 0.15 s after each request (400/min by arithmetic, no limiter); on a 429 it
sleeps Retry-After and resends. Same windows, same figures, and the ratio of the two.

Usage: python bench/rate.py [--assets 330] [--skip-bare] [--json-out FILE]
Figures, not assertions; exits 0 unless a run could not be measured at all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    API_KEY, ENV_ID, assetferry_cmd, child_env, exit_on_sigterm, local_client, parse_summary,
    sim_reset, sim_stats, simulator, start, stop, write_job,
)

PER_MINUTE = 400
PER_SECOND = 10
POLL = 0.5
WINDOW = 60.0
BARE_PACING = 0.15  # 60 s / 400


class Sampler(threading.Thread):
    """(monotonic time, stats) every 0.5 s from /_sandbox/stats until stopped."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with local_client(5.0) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                try:
                    s = sim_stats(self.root, client)
                    self.samples.append((time.monotonic(), s))
                except Exception:  # noqa: BLE001 - a missed sample only coarsens the curve
                    pass
                next_at += POLL
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def begin(self) -> Sampler:
        """Start polling and return once the first (pre-load) sample is in."""
        self.start()
        deadline = time.monotonic() + 10
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def finish(self) -> list[tuple[float, int]]:
        time.sleep(POLL * 2)  # one more sample after the last request
        self.stop_event.set()
        self.join(5)
        return [(t, s["accepted"]) for t, s in self.samples]


def _interp(points: list[tuple[float, int]], t: float) -> float:
    """Accepted count at time t, linear between samples (a cumulative count is monotone)."""
    if t <= points[0][0]:
        return points[0][1]
    for (t0, a0), (t1, a1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return a0 + (a1 - a0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return points[-1][1]


def analyse(points: list[tuple[float, int]]) -> dict[str, Any]:
    """Loading period and 60 s sliding-window counts from (time, accepted) samples."""
    if len(points) < 2 or points[-1][1] == points[0][1]:
        return {"error": "no accepted requests were sampled"}
    base, final = points[0][1], points[-1][1]
    # first sample that shows an accepted request, first sample that shows the final count
    first = next(t for t, a in points if a > base)
    last = next(t for t, a in points if a >= final)
    period = last - first
    in_period = final - _interp(points, first)  # requests accepted inside [first, last]
    out: dict[str, Any] = {"accepted": final - base, "period": period,
                           "avg_per_second": in_period / period if period > 0 else None}
    counts = []
    s = first
    while s + WINDOW <= last + 1e-9:
        counts.append(_interp(points, s + WINDOW) - _interp(points, s))
        s += 1.0
    if counts:
        out.update(windows=len(counts), min=min(counts), mean=sum(counts) / len(counts), max=max(counts))
    return out


def _fmt_windows(a: dict[str, Any]) -> list[str]:
    if "error" in a:
        return [f"   {a['error']}"]
    avg = a["avg_per_second"]
    lines = [f"   loading period {a['period']:.1f}s (first to last sample showing accepted requests), "
             f"{a['accepted']} accepted; average inside it {avg:.2f} req/s "
             f"({avg / PER_SECOND:.1%} of {PER_SECOND}/s)"]
    if "windows" in a:
        lines.append(f"   accepted per 60 s window ({a['windows']} windows, 1 s steps): "
                     f"min {a['min']:.0f} ({a['min'] / PER_MINUTE:.1%})  mean {a['mean']:.1f} "
                     f"({a['mean'] / PER_MINUTE:.1%})  max {a['max']:.0f} ({a['max'] / PER_MINUTE:.1%}) of {PER_MINUTE}")
    else:
        lines.append("   loading period shorter than 60 s: no full 60 s window (use --assets >= ~250 for the"
                     " per-minute figure)")
    return lines


def make_inputs(tmp: Path, n: int) -> Path:
    files = tmp / "files"
    files.mkdir()
    rows = ["id,title,description,file"]
    for i in range(n):
        name = f"asset-{i:05d}.txt"
        (files / name).write_text(f"bench asset {i}\n" + "x" * 1024, encoding="utf-8")
        rows.append(f"bench-{i:05d},Bench asset {i},Small file number {i},files/{name}")
    manifest = tmp / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def run_product(tmp: Path, root: str, job: Path, timeout: float) -> dict[str, Any]:
    sim_reset(root)
    sampler = Sampler(root).begin()
    out_path, err_path = tmp / "run.out", tmp / "run.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = start([*assetferry_cmd(), "run", str(job), "--output", "json"],
                     env=child_env(tmp, KONTENT_API_KEY=API_KEY), stdout=out, stderr=err)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on SIGTERM/Ctrl-C: never leave the run (or its Prefect server) behind
            total = time.monotonic() - t0
            stop(proc, grace=5)
    points = sampler.finish()
    stats = sim_stats(root)
    summary = parse_summary(out_path.read_text(encoding="utf-8", errors="replace"))
    res = {"analysis": analyse(points), "stats": stats, "summary": summary, "total_seconds": total,
           "returncode": proc.returncode, "timed_out": timed_out}
    if summary is None or proc.returncode != 0 or timed_out:
        res["stderr_tail"] = err_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    return res


def run_bare(tmp: Path, root: str, n: int, timeout: float) -> dict[str, Any]:
    """Sequential upload + upsert per asset, a fixed 0.15 s sleep after every request."""
    sim_reset(root)
    sampler = Sampler(root).begin()
    base = f"{root}/v2/projects/{ENV_ID}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    got_429 = errors = 0
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()

    def send(client: Any, method: str, url: str, **kw: Any) -> Any:
        nonlocal got_429
        while True:
            r = client.request(method, url, **kw)
            time.sleep(BARE_PACING)
            if r.status_code != 429:
                return r
            got_429 += 1
            time.sleep(float(r.headers.get("retry-after", "1")))

    with local_client(30.0) as client:
        for i in range(n):
            if time.monotonic() > deadline:
                break
            name = f"asset-{i:05d}.txt"
            data = (tmp / "files" / name).read_bytes()
            up = send(client, "POST", f"{base}/files/{name}", content=data,
                      headers={**auth, "Content-Type": "text/plain"})
            if up.status_code >= 300:
                errors += 1
                continue
            body = {"file_reference": {"id": up.json()["id"], "type": "internal"},
                    "external_id": f"bench-{i:05d}", "title": f"Bench asset {i}",
                    "descriptions": [{"language": {"codename": "default"},
                                      "description": f"Small file number {i}"}]}
            put = send(client, "PUT", f"{base}/assets/external-id/bench-{i:05d}", json=body, headers=auth)
            if put.status_code >= 300:
                errors += 1
    total = time.monotonic() - t0
    points = sampler.finish()
    return {"analysis": analyse(points), "stats": sim_stats(root), "seen_429": got_429, "errors": errors,
            "total_seconds": total}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=330, help="assets to load (2 requests each; default 330)")
    parser.add_argument("--skip-bare", action="store_true", help="skip the bare httpx comparison loop")
    parser.add_argument("--timeout", type=float, default=240, help="seconds allowed per side (default 240)")
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    tmp = Path(tempfile.mkdtemp(prefix="assetferry-bench-rate-"))
    figures: dict[str, Any] = {"assets": args.assets, "requests_expected": 2 * args.assets}
    try:
        manifest = make_inputs(tmp, args.assets)
        print(f"rate bench: {args.assets} assets ({2 * args.assets} requests) in {tmp}; "
              f"simulator limits {PER_SECOND}/s, {PER_MINUTE}/min", flush=True)
        with simulator(tmp) as root:
            job = write_job(tmp, name="bench-rate", manifest=manifest, root=root, batch_size=50, concurrency=2)
            print("running assetferry ...", flush=True)
            product = run_product(tmp, root, job, args.timeout)
            figures["assetferry"] = product
            bare = None
            if not args.skip_bare:
                print(f"running bare httpx loop (fixed {BARE_PACING}s pacing) ...", flush=True)
                bare = run_bare(tmp, root, args.assets, args.timeout)
                figures["bare"] = bare

        # ---- report -------------------------------------------------------------------------
        pa, ps, summ = product["analysis"], product["stats"], product["summary"]
        print()
        print(f"== share of Kontent's {PER_MINUTE} requests/min, {args.assets} assets ==")
        print("assetferry run job.yaml --output json  (batch_size 50, concurrency 2)")
        if summ:
            print(f"   summary: loaded={summ['loaded']} failed={summ['failed']} rejected={summ['rejected']} "
                  f"exit={product['returncode']}")
        else:
            print(f"   !! no JSON summary (exit {product['returncode']}, timed out: {product['timed_out']})")
        if product.get("stderr_tail"):
            print("   stderr tail:\n" + product["stderr_tail"])
        print(f"   simulator: requests {ps['requests']}, accepted {ps['accepted']}, throttled (429) "
              f"{ps['throttled']}, uploads {ps['uploads']}, assets {ps['assets']}")
        for line in _fmt_windows(pa):
            print(line)
        load = summ["seconds"] if summ else None
        total = product["total_seconds"]
        if load is not None:
            print(f"   wall time: load {load:.1f}s (summary 'seconds'), total {total:.1f}s incl. Prefect start-up;"
                  f" Prefect share (total - load)/total = {(total - load) / total:.1%} (informational)")
        if bare:
            ba, bs = bare["analysis"], bare["stats"]
            print(f"bare httpx loop (sequential, sleep {BARE_PACING}s after each request, 429 -> sleep Retry-After)")
            print(f"   simulator: requests {bs['requests']}, accepted {bs['accepted']}, throttled (429) "
                  f"{bs['throttled']}, assets {bs['assets']}; client errors {bare['errors']}; "
                  f"wall {bare['total_seconds']:.1f}s")
            for line in _fmt_windows(ba):
                print(line)
            if pa.get("period") and ba.get("period"):
                print(f"loading period for the same {2 * args.assets} requests: assetferry {pa['period']:.1f}s, "
                      f"bare {ba['period']:.1f}s (bare / assetferry = {ba['period'] / pa['period']:.3f})")
            if "mean" in pa and "mean" in ba:
                figures["ratio"] = pa["mean"] / ba["mean"]
                print(f"ratio assetferry / bare (mean 60 s window): {figures['ratio']:.3f}")
            elif pa.get("avg_per_second") and ba.get("avg_per_second"):
                figures["ratio"] = pa["avg_per_second"] / ba["avg_per_second"]
                print(f"ratio assetferry / bare (average rate over the loading period; no full 60 s window): "
                      f"{figures['ratio']:.3f}")
        if "mean" in pa:
            share = pa["mean"] / PER_MINUTE
            ok = share >= 0.95 and ps["throttled"] == 0
            print(f"goal: mean share >= 95% with 0 throttled: {share:.1%}, {ps['throttled']} throttled -> "
                  f"{'PASS' if ok else 'MISS'}", flush=True)
        else:
            print(f"goal: mean share >= 95% with 0 throttled: n/a (no full 60 s window); "
                  f"{ps['throttled']} throttled", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
