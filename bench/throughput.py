"""Throughput figures of issue 19 from one run: the cost around the HTTP work, and the limiter.

One Kontent.ai simulator subprocess; N small files (default 2,000, two requests each: upload +
upsert). Printed, each as a ratio measured inside this run:

1. **bare**: a threaded httpx loop (one pooled client, ``concurrency x inflight`` threads, each
   taking the next asset: upload, then upsert) against the unthrottled simulator -> assets/s.
2. **library**: assetferry's loader without Prefect, as the flow runs it (batches of 50,
   ``concurrency`` batches at once, each sending ``inflight`` units at once, one ledger journal
   per batch, the shared client and limiter), the connector's rate limits switched off ->
   assets/s and the ratio library / bare (goal >= 0.85). The same with ``inflight=1`` (the
   old sequential batches) for comparison.
3. **CLI**: ``assetferry run job.yaml --output json`` for the same assets (ephemeral Prefect;
   skip with ``--skip-cli``) -> total wall time, the flow's load time and Prefect's share of
   the wall time = (wall - library time) / wall (goal <= 10 %).
4. **limiter share**: the simulator limited to ``--limit`` requests/s (per minute unlimited),
   the connector's ``requests_per_second`` set to the same, ``--share-inflight`` units in flight
   per batch (enough for the limiter to bind at 150 ms), behind a latency proxy (its own
   process) adding 0 ms and 150 ms of round trip (``--rtt``): the achieved send rate from 1 s
   after the first send (the run's start reads the environment's catalogue) to the last, as a
   share of the limit, and the simulator's 429 count (goal >= 0.97 with 0 x 429). The limiter
   before issue 19 (read from git, if available) is measured the same way for comparison.
5. what one ``httpx.Client`` per batch cost (the shared pool removed it).

Usage: python bench/throughput.py [--assets 2000] [--concurrency 2] [--inflight 4]
       [--limit 40] [--rtt 0,150] [--rate-seconds 20] [--skip-cli] [--json-out FILE]
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
from _common import (
    API_KEY,
    ENV_ID,
    ROOT,
    assetferry_cmd,
    child_env,
    exit_on_sigterm,
    free_port,
    local_client,
    parse_summary,
    simulator,
    start,
    stop,
)
from assetferry.connectors.core.ledger import Ledger, new_run_id
from assetferry.connectors.core.loader import BatchResult, Loader
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.pipeline import batch_sizes
from assetferry.connectors.sources.base import RecordChunk
from assetferry.connectors.vendors.kontent import KontentConnector
from pydantic import SecretStr

UNLIMITED = {"requests_per_second": None, "requests_per_minute": None}
#: the last commit whose limiter counted a request until W after its response (before issue 19)
OLD_LIMITER = "a2614b3d7418b47d948dc7fee26ac49081d58dde:connectors/core/ratelimit.py"


# ---- the simulator and the inputs --------------------------------------------------------------

def sim_setup(root: str, per_second: int, per_minute: int) -> None:
    with local_client() as c:
        c.post(f"{root}/_sandbox/reset").raise_for_status()
        c.post(f"{root}/_sandbox/limits", json={"per_second": per_second, "per_minute": per_minute}
               ).raise_for_status()


def sim_stats(root: str) -> dict[str, Any]:
    with local_client() as c:
        return c.get(f"{root}/_sandbox/stats").json()


def make_inputs(tmp: Path, n: int, prefix: str = "bench") -> tuple[Path, list[dict[str, str]]]:
    files = tmp / "files"
    files.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        name = f"{prefix}-{i:05d}.txt"
        (files / name).write_text(f"bench asset {i}\n" + "x" * 1024, encoding="utf-8")
        rows.append({"id": f"{prefix}-{i:05d}", "title": f"Bench asset {i}",
                     "description": f"Small file number {i}", "file": str(files / name)})
    manifest = tmp / f"{prefix}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, rows


def connector(url: str, **settings: Any) -> KontentConnector:
    return KontentConnector(url=url, settings={"environment_id": ENV_ID, **settings},
                            credentials={"api_key": SecretStr(API_KEY)})


def ready_frame(rows: list[dict[str, str]], source: Path) -> pd.DataFrame:
    good, rejects = canonicalize(RecordChunk(pd.DataFrame(rows), str(source), 1), DuplicateTracker())
    assert rejects.empty, rejects
    ready, rejected = connector("http://unused/v2").prepare(good)
    assert rejected.empty, rejected
    return ready


# ---- 1. bare -----------------------------------------------------------------------------------

def run_bare(root: str, rows: list[dict[str, str]], threads: int) -> dict[str, Any]:
    base = f"{root}/v2/projects/{ENV_ID}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    todo = iter(rows)
    lock = threading.Lock()
    errors = 0

    def worker(client: Any) -> None:
        nonlocal errors
        while True:
            with lock:
                row = next(todo, None)
            if row is None:
                return
            name = Path(row["file"]).name
            with open(row["file"], "rb") as f:
                up = client.post(f"{base}/files/{name}", content=f.read(),
                                 headers={**auth, "Content-Type": "text/plain"})
            if up.status_code >= 300:
                errors += 1
                continue
            body = {"file_reference": {"id": up.json()["id"], "type": "internal"},
                    "external_id": row["id"], "title": row["title"],
                    "descriptions": [{"language": {"codename": "default"}, "description": row["description"]}]}
            put = client.put(f"{base}/assets/external-id/{row['id']}", json=body, headers=auth)
            if put.status_code >= 300:
                errors += 1

    with local_client(30.0) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(worker, client) for _ in range(threads)]:
                f.result()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "assets_per_second": len(rows) / seconds, "errors": errors}


# ---- 2. the library (the flow's work without Prefect) -------------------------------------------

def run_library(url: str, ready: pd.DataFrame, state: Path, *, concurrency: int, inflight: int,
                settings: dict[str, Any], batch_size: int = 50,
                make: Any = connector) -> dict[str, Any]:
    """The flow's load step in-process: ``concurrency`` batches at once, a connector per batch."""
    ledger = Ledger(str(state))
    run_id = new_run_id()
    batches, start, sizes = [], 0, batch_sizes(batch_size, concurrency)  # the flow's batches
    while start < len(ready):
        size = next(sizes)
        batches.append(ready.iloc[start:start + size].reset_index(drop=True))
        start += size

    def one(number: int, batch: pd.DataFrame) -> BatchResult:
        c = make(url, **settings)
        with ledger.writer(run_id, number) as journal:
            return Loader(c, inflight=inflight).load(batch, {}, journal, run_id)

    total = BatchResult()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(one, n, b) for n, b in enumerate(batches)]:
            total.merge(f.result())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "assets_per_second": len(ready) / seconds, "counts": dict(total.counts),
            "requests": total.requests, "throttled": total.throttled}


# ---- 3. the CLI (Prefect) -------------------------------------------------------------------------

def run_cli(tmp: Path, root: str, manifest: Path, *, concurrency: int, timeout: float,
            mode: str = "ephemeral", name: str = "cli") -> dict[str, Any]:
    """``assetferry run`` as a user runs it: ``mode`` is ``ephemeral`` (a temporary Prefect server
    per command) or ``local`` (assetferry's reused local server, started by an earlier run)."""
    job = {"name": f"bench-throughput-{name}", "source": {"url": str(manifest), "format": "csv"},
           "destination": {"vendor": "kontent", "url": f"{root}/v2",
                           "credentials": {"api_key": "env:KONTENT_API_KEY"},
                           "settings": {"environment_id": ENV_ID, **UNLIMITED}},
           "state": str(tmp / f"state-{name}"), "batch_size": 50, "concurrency": concurrency}
    path = tmp / f"job-{name}.yaml"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    out_path, err_path = tmp / f"{name}.out", tmp / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = start([*assetferry_cmd(), "run", str(path), "--output", "json"],
                     env=cli_env(tmp, mode), stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            wall = time.perf_counter() - t0
            stop(proc, grace=5)
    summary = parse_summary(out_path.read_text(encoding="utf-8", errors="replace"))
    res: dict[str, Any] = {"wall": wall, "summary": summary, "returncode": proc.returncode}
    if summary is None:
        res["stderr_tail"] = err_path.read_text(encoding="utf-8", errors="replace")[-2000:]
    return res


_LOCAL_PORT: list[int] = []


def cli_env(tmp: Path, mode: str) -> dict[str, str]:
    if mode == "ephemeral":
        return child_env(tmp, KONTENT_API_KEY=API_KEY)
    if not _LOCAL_PORT:
        _LOCAL_PORT.append(free_port())
    return child_env(tmp, KONTENT_API_KEY=API_KEY, ASSETFERRY_PREFECT_SERVER="local",
                     ASSETFERRY_PREFECT_PORT=str(_LOCAL_PORT[0]))


# ---- 4. the limiter at added round-trip time -------------------------------------------------------

class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that delivers every chunk, each way, ``one_way`` seconds after it
    was read (order kept): a link with that latency and no jitter of its own."""

    def __init__(self, upstream_port: int, one_way: float) -> None:
        self.upstream_port, self.one_way = upstream_port, one_way
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._loop.run_until_complete(main())
        self._loop.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        task = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(65536)
                queue.put_nowait((loop.time() + self.one_way, data))
                if not data:
                    break
            await task
        except (ConnectionError, OSError):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                w.close()

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


class ProxyProcess:
    """``LatencyProxy`` in its own process (``--serve-proxy``), so that its timing does not share
    the GIL with the client threads being measured; the port is read from its first line."""

    def __init__(self, tmp: Path, upstream_port: int, one_way: float) -> None:
        self.args = [sys.executable, str(Path(__file__).resolve()), "--serve-proxy",
                     f"{upstream_port}:{one_way}"]
        self.tmp = tmp

    def __enter__(self) -> ProxyProcess:
        self.proc = start(self.args, env=child_env(self.tmp), stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode().strip() if self.proc.stdout else ""
        if not line.isdigit():
            stop(self.proc)
            raise RuntimeError(f"latency proxy did not start ({line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, grace=2)
        if self.proc.stdout:
            self.proc.stdout.close()


def serve_proxy(spec: str) -> None:
    upstream, one_way = spec.split(":")
    with LatencyProxy(int(upstream), float(one_way)) as proxy:
        print(proxy.port, flush=True)
        while True:
            time.sleep(3600)


class Recording:
    """A ``Limiter`` wrapper that records every send time (the seam the issue keeps)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[float] = []
        self.rtts: list[float] = []
        self._out: dict[int, float] = {}
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        token = self.inner.acquire()
        with self._lock:
            now = time.monotonic()
            self.sent.append(now)
            self._out[id(token)] = now
        return token

    def release(self, token: Any) -> None:
        self.inner.release(token)
        with self._lock:
            sent = self._out.pop(id(token), None)
            if sent is not None:
                self.rtts.append(time.monotonic() - sent)

    def penalise(self, seconds: float) -> None:
        self.inner.penalise(seconds)


def old_limiter_class() -> Any:
    """The pre-issue-19 ``SlidingWindowLimiter`` read from git (None when git is unavailable)."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", OLD_LIMITER], capture_output=True,
                                check=True, timeout=20).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return None
    module = types.ModuleType("old_ratelimit")
    sys.modules["old_ratelimit"] = module  # dataclasses look their module up
    exec(compile(source, "old_ratelimit.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module.SlidingWindowLimiter


def run_share(sim_root: str, rows: list[dict[str, str]], source: Path, tmp: Path, *, limit: int, rtt: float,
              threads: tuple[int, int], seconds: float, limiter_class: Any = None) -> dict[str, Any]:
    """Load for about ``seconds`` through a proxy adding ``rtt``; the send rate as a share of ``limit``."""
    from assetferry.connectors.core.ratelimit import Window

    port = int(sim_root.rsplit(":", 1)[1])
    sim_setup(sim_root, limit, 10_000_000)
    n = min(len(rows), int(limit * seconds / 2))  # two requests per asset
    ready = ready_frame(rows[:n], source)
    settings = {"requests_per_second": limit, "requests_per_minute": None}
    with ProxyProcess(tmp, port, rtt / 2) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v2"
        recorder = Recording(None)
        lock = threading.Lock()

        def make(url: str, **settings: Any) -> KontentConnector:
            c = connector(url, **settings)
            session = c.session

            def wrapped() -> Any:
                http = session()
                with lock:
                    if recorder.inner is None:
                        recorder.inner = (http.limiter if limiter_class is None else
                                          limiter_class([Window(limit, 1.0)], min_interval=1.0 / limit))
                http.limiter = recorder
                return http

            c.session = wrapped  # type: ignore[method-assign]
            return c

        lib = run_library(url, ready, tmp / f"state-share-{rtt}-{limiter_class is not None}",
                          concurrency=threads[0], inflight=threads[1], settings=settings, make=make)
    stats = sim_stats(sim_root)
    # from 1 s after the first send: the run's start (the catalogue read, three sequential
    # requests before any asset) is not the limiter's doing
    sent = sorted(recorder.sent)
    sent = [t for t in sent if t >= sent[0] + 1.0] if sent else sent
    span = sent[-1] - sent[0] if len(sent) > 1 else 0.0
    rate = (len(sent) - 1) / span if span else 0.0
    # the most sends in any 1 s window (client side; the simulator counts at arrival)
    most, j = 0, 0
    for i, t in enumerate(sent):
        while sent[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    rtts = sorted(recorder.rtts) or [0.0]
    spread = {f"p{q}": rtts[min(len(rtts) - 1, int(len(rtts) * q / 100))] - rtts[0] for q in (50, 90, 99)}
    return {"rtt": rtt, "assets": n, "sends": len(sent), "span": span, "rate": rate, "share": rate / limit,
            "throttled": stats["throttled"], "max_in_1s": most, "rtt_min": rtts[0], "rtt_spread": spread,
            "counts": lib["counts"]}


def client_cost(n: int = 200) -> dict[str, float]:
    """What building (and closing) one pooled client per batch cost, against the shared pool."""
    from assetferry.connectors.core.http import VendorHTTP

    t0 = time.perf_counter()
    for _ in range(n):
        VendorHTTP("http://127.0.0.1:9/v2", headers={"Accept": "application/json"}).close()
    own = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        VendorHTTP("http://127.0.0.1:9/v2", headers={"Accept": "application/json"}, pool_key="bench").close()
    shared = (time.perf_counter() - t0) / n
    return {"per_batch_client_ms": own * 1000, "shared_client_ms": shared * 1000}


# ---- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2, help="batches at once (the job's concurrency)")
    parser.add_argument("--inflight", type=int, default=4, help="units in flight per batch")
    parser.add_argument("--limit", type=int, default=40, help="requests/s for the limiter share")
    parser.add_argument("--rtt", default="0,150", help="added round-trip times in ms, comma-separated")
    parser.add_argument("--share-inflight", type=int, default=8,
                        help="units in flight per batch for the limiter share (enough that the limiter binds)")
    parser.add_argument("--rate-seconds", type=float, default=20.0, help="length of each limiter run")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-old", action="store_true", help="skip the pre-issue-19 limiter")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--serve-proxy", help=argparse.SUPPRESS)  # internal: UPSTREAM_PORT:ONE_WAY_SECONDS
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.serve_proxy:
        serve_proxy(args.serve_proxy)
        return {}
    threads = args.concurrency * args.inflight
    tmp = Path(tempfile.mkdtemp(prefix="assetferry-bench-throughput-"))
    fig: dict[str, Any] = {"assets": args.assets, "concurrency": args.concurrency, "inflight": args.inflight}
    try:
        manifest, rows = make_inputs(tmp, args.assets)
        ready = ready_frame(rows, manifest)
        print(f"throughput bench: {args.assets} assets ({2 * args.assets} requests), concurrency "
              f"{args.concurrency} x inflight {args.inflight} = {threads} requests in flight; {tmp}", flush=True)
        with simulator(tmp) as root:
            url = f"{root}/v2"
            sim_setup(root, 1_000_000, 100_000_000)
            fig["bare"] = run_bare(root, rows, threads)
            print(f"bare httpx loop, {threads} threads: {fig['bare']['assets_per_second']:.0f} assets/s "
                  f"({fig['bare']['seconds']:.2f}s, {fig['bare']['errors']} errors)", flush=True)
            for name, inflight in (("library", args.inflight), ("library_inflight1", 1)):
                sim_setup(root, 1_000_000, 100_000_000)
                fig[name] = lib = run_library(url, ready, tmp / f"state-{name}", concurrency=args.concurrency,
                                              inflight=inflight, settings=UNLIMITED)
                print(f"assetferry loader (no Prefect), inflight {inflight}: {lib['assets_per_second']:.0f} "
                      f"assets/s ({lib['seconds']:.2f}s) {lib['counts']}; ratio to bare "
                      f"{lib['assets_per_second'] / fig['bare']['assets_per_second']:.3f}", flush=True)
            fig["ratio"] = fig["library"]["assets_per_second"] / fig["bare"]["assets_per_second"]

            if not args.skip_cli:
                lib_s = fig["library"]["seconds"]
                bare_rate = fig["bare"]["assets_per_second"]
                # ephemeral: a temporary Prefect server per command; local: assetferry's reused
                # server (the default), started by an unmeasured first run that loads the same job.
                for mode in ("ephemeral", "local"):
                    if mode == "local":
                        sim_setup(root, 1_000_000, 100_000_000)
                        run_cli(tmp, root, manifest, concurrency=args.concurrency, timeout=args.timeout,
                                mode=mode, name="local-warmup")
                    sim_setup(root, 1_000_000, 100_000_000)
                    print(f"running assetferry run ({mode} Prefect) ...", flush=True)
                    cli = fig[f"cli_{mode}"] = run_cli(tmp, root, manifest, concurrency=args.concurrency,
                                                       timeout=args.timeout, mode=mode, name=f"cli-{mode}")
                    s = cli["summary"]
                    if not s:
                        print(f"   !! no summary (exit {cli['returncode']}):\n{cli.get('stderr_tail', '')}", flush=True)
                        continue
                    cli["prefect_share"] = (cli["wall"] - lib_s) / cli["wall"]
                    cli["outside_flow"] = cli["wall"] - s["seconds"]
                    cli["in_flow_share"] = (s["seconds"] - lib_s) / s["seconds"]
                    print(f"assetferry run ({mode}): wall {cli['wall']:.2f}s, flow load {s['seconds']:.2f}s, loaded "
                          f"{s['loaded']}; assets/s over the wall {args.assets / cli['wall']:.0f} (ratio to bare "
                          f"{args.assets / cli['wall'] / bare_rate:.3f}), over the load "
                          f"{args.assets / s['seconds']:.0f} (ratio {args.assets / s['seconds'] / bare_rate:.3f})",
                          flush=True)
                    print(f"   Prefect's share of the wall time (wall - library time) / wall = "
                          f"{cli['prefect_share']:.1%}; outside the flow body {cli['outside_flow']:.2f}s "
                          f"(process start, imports, flow-run bookkeeping); inside the flow "
                          f"(load - library) / load = {cli['in_flow_share']:.1%}", flush=True)
                fig["cli"] = fig.get("cli_local") or fig.get("cli_ephemeral") or {}

            old = None if args.skip_old else old_limiter_class()
            fig["share"] = []
            for rtt_ms in [float(x) for x in args.rtt.split(",") if x.strip()]:
                for label, cls in (("limiter", None), ("old limiter", old)):
                    if label == "old limiter" and cls is None:
                        continue
                    r = run_share(root, rows, manifest, tmp, limit=args.limit, rtt=rtt_ms / 1000,
                                  threads=(args.concurrency, args.share_inflight), seconds=args.rate_seconds,
                                  limiter_class=cls)
                    r["label"] = label
                    fig["share"].append(r)
                    sp = r["rtt_spread"]
                    margin = (f"; round trips min {r['rtt_min'] * 1000:.0f} ms, p50/p90/p99 above it "
                              f"{sp['p50'] * 1000:.1f}/{sp['p90'] * 1000:.1f}/{sp['p99'] * 1000:.1f} ms")
                    print(f"{label} at +{rtt_ms:.0f} ms RTT, limit {args.limit}/s, {args.concurrency} x "
                          f"{args.share_inflight} in flight: share {r['share']:.3f} "
                          f"({r['rate']:.2f}/s over {r['span']:.1f}s, {r['sends']} sends), 429s {r['throttled']}, "
                          f"most sends in 1 s {r['max_in_1s']}{margin}", flush=True)

        fig["client"] = client_cost()
        c = fig["client"]
        print(f"one httpx.Client per batch: {c['per_batch_client_ms']:.2f} ms each; the shared pool: "
              f"{c['shared_client_ms']:.3f} ms", flush=True)
        print()
        print("== summary ==")
        print(f"assets/s library / bare at {threads} in flight: {fig['ratio']:.3f} (goal >= 0.85)")
        for mode in ("ephemeral", "local"):
            c = fig.get(f"cli_{mode}") or {}
            if c.get("prefect_share") is not None:
                print(f"Prefect's share, {args.assets} assets, {mode} server: of the wall {c['prefect_share']:.1%} "
                      f"(fixed {c['outside_flow']:.2f}s outside the flow body); inside the flow "
                      f"{c['in_flow_share']:.1%} (goal <= 10%)")
        for r in fig["share"]:
            print(f"{r['label']} share of {args.limit}/s at +{r['rtt'] * 1000:.0f} ms RTT: {r['share']:.3f}, "
                  f"{r['throttled']} x 429 (goal >= 0.97, 0 x 429)")
        if args.json_out:
            args.json_out.write_text(json.dumps(fig, indent=2, default=str), encoding="utf-8")
        return fig
    finally:
        if _LOCAL_PORT:
            from assetferry.flows import server

            server.stop(tmp / "prefect-home")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
