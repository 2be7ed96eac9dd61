"""The ``sync_assets`` flow: stream the source, load batches concurrently, ledger, rejects, report."""

from __future__ import annotations

import logging
import re
from pathlib import Path
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from assetferry.connectors.core.errors import AuthError, ConfigError, TransientError
from assetferry.connectors.core.job import JobSpec, load_job
from assetferry.connectors.core.ledger import Ledger, LedgerIndex, RejectsWriter, new_run_id
from assetferry.connectors.core.loader import BatchResult
from assetferry.connectors.core.records import rejects_frame
from assetferry.connectors.core.redact import redact_handlers
from assetferry.connectors.core.lock import RunLock
from assetferry.connectors.pipeline import Pipeline, make_connector, state_options
from assetferry.connectors.vendors.base import BaseConnector, Outcome
from assetferry.flows import secrets  # noqa: F401 - registers the secret: credential scheme
from assetferry.tasks.load import ensure_budget, finish_load, load_batch, shares_budget

#: Called after every batch with the running summary; the CLI hangs its progress bar here.
ProgressHook = Callable[["RunSummary"], None]
PROGRESS_HOOKS: list[ProgressHook] = []
ARTIFACT_EVERY = 1.0  # seconds between two updates of a run's progress artifact (plus the last)


@dataclass
class RunSummary:
    job: str
    vendor: str
    run_id: str
    total: int = 0
    loaded: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed: int = 0
    pending: int = 0
    outside_window: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    state: str = ""
    rejects_file: str | None = None
    error: str | None = None
    stopped: str | None = None  # why the run stopped early (quota, vendor down); the rest is pending
    resets_at: str | None = None  # when the vendor's quota resets, where it says
    batches: int = 0
    requests: int = 0
    throttled: int = 0  # 429 answers seen (and waited out)
    since: str | None = None
    until: str | None = None
    watermark: str | None = None  # incremental: rows updated before it were skipped
    finish: dict[str, Any] | None = None  # what the vendor's finish step reported
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. notes: {what prepare changed: rows}

    @property
    def done(self) -> int:
        return (self.loaded + self.unchanged + self.rejected + self.failed + self.pending
                + self.outside_window)

    @property
    def exit_code(self) -> int:
        """0 every row loaded (or unchanged); 1 rows rejected/failed/pending; 2 configuration."""
        if self.error:
            return 2
        return 1 if (self.rejected or self.failed or self.pending) else 0

    def table(self) -> list[dict[str, Any]]:
        window = (f"{self.since or '-'} .. {self.until or '-'}" if (self.since or self.until)
                  else f"updated since {self.watermark}" if self.watermark else "all rows")
        rows = [("total", self.total), ("window", window), ("loaded", self.loaded), ("unchanged", self.unchanged),
                ("rejected", self.rejected), ("failed", self.failed), ("pending", self.pending),
                ("outside window", self.outside_window), ("requests", self.requests),
                ("429s seen", self.throttled), ("bytes sent", self.bytes_sent),
                ("seconds", round(self.seconds, 1)), ("rejects file", self.rejects_file or "-")]
        if self.stopped:
            rows.append(("stopped", self.stopped + (f" (resets {self.resets_at})" if self.resets_at else "")))
        rows += list((self.extra.get("notes") or {}).items())
        return [{"metric": k, "value": v} for k, v in rows]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data


def _key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _failed_rejects(batch: pd.DataFrame, outcomes: list[Outcome]) -> pd.DataFrame:
    bad = {o.id: o for o in outcomes if o.status in ("rejected", "failed")}
    if not bad:
        return batch.iloc[0:0]
    rows = batch[batch["id"].isin(list(bad))]
    ids = rows["id"].tolist()
    return rejects_frame(
        rows,
        field=pd.Series([bad[i].field or "" for i in ids], index=rows.index),
        reason=pd.Series([("failed (will retry next run): " if bad[i].status == "failed" else "")
                          + bad[i].reason for i in ids], index=rows.index),
    )


class _Batches:
    """Keeps at most ``job.concurrency`` load tasks in flight, collects them as they complete
    (a slow batch never blocks the others), and folds each batch's result into the summary, the
    rejects file, the progress artifact and the progress hooks."""

    def __init__(self, job: JobSpec, pipeline: Pipeline, ledger: Ledger, rejects: RejectsWriter,
                 summary: RunSummary, started: float) -> None:
        self.job, self.pipeline, self.ledger, self.rejects = job, pipeline, ledger, rejects
        self.summary, self.started = summary, started
        self.counts: Counter[str] = Counter()
        self.inflight: dict[PrefectFuture, tuple[int, pd.DataFrame]] = {}
        self.logger = get_run_logger()
        self.task = load_batch.with_options(retries=job.retries, retry_delay_seconds=job.retry_delay_seconds)
        self.artifact_at = time.monotonic()
        self.progress_id = create_progress_artifact(
            progress=0.0, key=_key(job.name, summary.vendor, "progress"), description=f"{job.name} -> {summary.vendor}")

    def submit(self, number: int, batch: pd.DataFrame, priors: LedgerIndex) -> None:
        name = f"{self.job.name}-{self.summary.vendor}-batch-{number}"
        batch_priors = priors.get_many(batch["id"].tolist())
        fut = self.task.with_options(task_run_name=name).submit(
            self.job, batch, batch_priors, self.summary.run_id, number)
        self.inflight[fut] = (number, batch)
        while len(self.inflight) >= self.job.concurrency:
            self.collect()

    def reject(self, rows: pd.DataFrame) -> None:
        self.rejects.write(rows)
        self.counts["rejected"] += len(rows)

    def collect(self) -> None:
        """Wait for whichever batch finishes first. Raises AuthError/ConfigError (stop the run)."""
        fut = next(as_completed(list(self.inflight)))
        number, batch = self.inflight.pop(fut)
        try:
            result: BatchResult = fut.result()
        except (AuthError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - the batch failed after its retries
            result = self._failed_batch(number, batch, exc)
        if result.quota and not self.summary.stopped:
            self.summary.stopped = f"quota: {result.quota}"
            self.summary.resets_at = result.resets_at
            self.logger.warning("stopping: %s; the rest stays pending%s", result.quota,
                                f" (resets {result.resets_at})" if result.resets_at else "")
        self.counts.update(result.counts)
        self.summary.bytes_sent += result.bytes_sent
        self.summary.requests += result.requests
        self.summary.throttled += result.throttled
        notes = getattr(self.pipeline.connector, "notes", None)
        if notes is not None:  # what each batch's connector counted (e.g. 0-byte files sent)
            notes.update(result.notes)
        self.rejects.write(_failed_rejects(batch, result.outcomes))
        self.summary.batches += 1
        self.report()

    def _failed_batch(self, number: int, batch: pd.DataFrame, exc: Exception) -> BatchResult:
        """A batch that raised after its retries: rows its attempts loaded stay loaded, rows the
        ledger holds unchanged stay unchanged (they needed no request), the others failed."""
        done = {e.id for e in self.ledger.batch_entries(self.summary.run_id, number).values()
                if e.status in self.pipeline.connector.spec.done_statuses}
        settled = self._settled_without_sending(batch)
        reason = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TransientError) and not self.summary.stopped:
            # Retried by the HTTP layer and by Prefect and still failing: the vendor is down.
            # Stop sending; what was not attempted stays pending for the next run.
            self.summary.stopped = f"{self.summary.vendor} looks unavailable after retries ({exc})"
            self.logger.error("stopping early: %s", self.summary.stopped)
        result = BatchResult()
        for i in batch["id"]:
            result.add(Outcome(i, "loaded") if i in done
                       else settled.get(str(i)) or Outcome(i, "failed", reason=reason))
        return result

    def _settled_without_sending(self, batch: pd.DataFrame) -> dict[str, Outcome]:
        """The rows of ``batch`` the loader decides without a request: unchanged since an earlier
        run, or loaded by an earlier attempt of this one (id -> outcome). Best effort: {} when it
        cannot be worked out (the rows then count as failed, as before)."""
        from assetferry.connectors.core.loader import Loader

        try:
            priors = self.ledger.load().get_many(batch["id"].astype(str).tolist())
            _, decided = Loader(self.pipeline.connector).rows(batch.reset_index(drop=True), priors,
                                                              self.summary.run_id)
        except Exception:  # noqa: BLE001 - whatever failed the batch may fail this too
            return {}
        return {o.id: o for _, o in decided if o.status in ("loaded", "unchanged")}

    def drain(self) -> None:
        while self.inflight:
            self.collect()

    def abandon(self) -> None:
        """After a fatal error: let the in-flight batches finish, without counting them."""
        for fut in self.inflight:
            fut.wait()
        self.inflight.clear()

    def report(self, final: bool = False) -> None:
        s = self.summary
        if final and s.stopped:  # rows never sent are pending for the next run
            seen = sum(self.counts[k] for k in ("loaded", "unchanged", "rejected", "failed", "pending"))
            self.counts["pending"] += max(0, s.total - seen - self.pipeline.counts.outside_window)
        for status in ("loaded", "unchanged", "rejected", "failed", "pending"):
            setattr(s, status, self.counts[status])
        s.outside_window = self.pipeline.counts.outside_window
        now = time.monotonic()
        s.seconds = now - self.started
        # the UI's progress bar: at most one update per ARTIFACT_EVERY seconds, and the last one
        # (each is a request to the Prefect API on the flow's thread, between two batches)
        if final or now - self.artifact_at >= ARTIFACT_EVERY:
            self.artifact_at = now
            update_progress_artifact(
                self.progress_id, progress=100.0 if final else 100.0 * s.done / max(s.total, 1),
                description=f"{self.job.name} -> {s.vendor}: {s.done} of {s.total} rows ({s.loaded} loaded, "
                            f"{s.unchanged} unchanged, {s.rejected} rejected, {s.failed} failed, {s.pending} pending)")
        for hook in PROGRESS_HOOKS:
            hook(s)


def _window_label(since: str | None, until: str | None) -> str:
    """``2026-01-01..2026-01-08`` for a window run, "" for a full run (run names and tags)."""
    if not since and not until:
        return ""
    return f"{(since or '')[:19]}..{(until or '')[:19]}".replace(":", "")


def _run_name() -> str:
    """``<job>-to-<vendor>``, plus the window for a window run (backfills tell runs apart)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    job = params.get("job")
    if job is None and params.get("job_file"):
        try:
            job = load_job(params["job_file"])
        except ConfigError:
            return Path(str(params["job_file"])).stem
    name = job.get("name") if isinstance(job, dict) else job.name
    dest = job.get("destination", {}) if isinstance(job, dict) else job.destination
    vendor = dest.get("vendor") if isinstance(dest, dict) else dest.vendor
    window = _window_label(params.get("since"), params.get("until"))
    return f"{name}-to-{vendor}" + (f"-{window}" if window else "")


def _tag_run(labels: list[str]) -> None:
    """Add tags to this flow run (job, vendor, window) so runs can be filtered in the UI."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.id)
            client.update_flow_run(run.id, tags=sorted({*run.tags, *labels}))
    except Exception as exc:  # noqa: BLE001 - tags are a convenience; the run goes on
        logging.getLogger("assetferry.flow").warning("could not tag the run: %s", type(exc).__name__)


def _route_connector_logs() -> None:
    """Connector logs (retries, 429s, reconciles) reach the UI in every run mode, as Prefect's
    PREFECT_LOGGING_EXTRA_LOGGERS would arrange it: copy the handlers of ``prefect.extra``."""
    ours = logging.getLogger("assetferry")
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    # URL passwords and signatures masked, control characters escaped, in every line the run logs.
    redact_handlers("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.extra", "assetferry")
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


def _rejects_markdown(summary: RunSummary, sample: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")[:300]

    total = summary.rejected + summary.failed
    lines = [f"### {total} rows not loaded (first {len(sample)} below)", "",
             f"Full list: `{summary.rejects_file}`", "", "| source | row | id | field | reason |",
             "|---|---|---|---|---|"]
    lines += [f"| {cell(r.get('source'))} | {cell(r.get('row'))} | {cell(r.get('id'))} | {cell(r.get('field'))} "
              f"| {cell(r.get('reason'))} |" for r in sample]
    return "\n".join(lines)


def _final_state(summary: RunSummary) -> State:
    """Completed for a clean run; a Completed named ``Partial`` (told apart in the UI) when rows
    were rejected, failed or left pending; the summary is the result either way."""
    data = summary.to_dict()
    if summary.exit_code == 0:
        return Completed(data=data, message=f"{summary.loaded} loaded, {summary.unchanged} unchanged")
    parts = [f"{n} {k}" for k, n in (("rejected", summary.rejected), ("failed", summary.failed),
                                     ("pending", summary.pending)) if n]
    message = f"{summary.loaded} loaded; " + ", ".join(parts)
    if summary.stopped:
        message += f"; stopped: {summary.stopped}"
    return Completed(data=data, message=message, name="Partial")


@flow(
    name="sync-assets",
    flow_run_name=lambda: _run_name(),
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    log_prints=False,
    validate_parameters=True,
)
def sync_assets(job: JobSpec, since: str | None = None, until: str | None = None,
                limit: int | None = None, full_refresh: bool = False) -> Any:
    """Load every record of ``job.source`` into ``job.destination``; returns the summary dict.

    Incremental: without ``since``/``until``, rows whose ``updated_at`` is older than the ledger's
    watermark (the newest ``updated_at`` of the last complete run) are skipped (rows without
    ``updated_at`` are always considered); ``full_refresh`` considers every row.

    Re-runs skip unchanged records (ledger); a killed run resumes without duplicates; rejected
    and failed rows go to ``<state>/<job>/<vendor>-<dest>/rejects.csv``. Returns the summary
    (``exit_code`` 0/1/2). Concurrency: at most ``job.concurrency`` batches in flight; a vendor
    still down after every retry stops the run, leaving the rest pending for the next one.
    """
    started = time.monotonic()
    vendor = job.destination.vendor
    summary = RunSummary(job=job.name, vendor=vendor, run_id=new_run_id(), since=since, until=until)
    _route_connector_logs()
    window = _window_label(since, until)
    _tag_run([f"job:{job.name}", f"vendor:{vendor}", *([f"window:{window}"] if window else [])])
    connector = make_connector(job)  # resolves credentials: fails fast on a missing one
    if shares_budget(job):  # before any batch: every process leases from this global limit
        budget = ensure_budget(connector)
        if budget:
            get_run_logger().info("shared rate budget %s: blocks of %d at %.2f requests/s across all processes",
                                  budget.name, budget.block, budget.rate)
    pipeline = Pipeline(job, connector, since=since, until=until, limit=limit)
    ledger = pipeline.ledger()
    summary.state = ledger.url
    # One run per job and destination at a time, whatever started it: a second one waits up to
    # lock_wait_seconds, then stops with a message naming the run that holds the lock.
    lock = RunLock(ledger.url, summary.run_id, state_options(job), wait_seconds=job.lock_wait_seconds).acquire()
    try:
        return _sync(job, summary, connector, pipeline, ledger, started, full_refresh)
    finally:
        lock.release()


def _sync(job: JobSpec, summary: RunSummary, connector: Any, pipeline: Pipeline, ledger: Ledger,
          started: float, full_refresh: bool) -> Any:
    logger = get_run_logger()
    vendor = job.destination.vendor
    priors = ledger.load()
    incremental = not full_refresh and pipeline.since is None and pipeline.until is None
    mark = ledger.watermark() if incremental else None
    if mark:
        pipeline.watermark = pd.Timestamp(mark)
        summary.watermark = mark
        logger.info("incremental: rows updated before %s are skipped (--full-refresh considers all)", mark)
    limit = pipeline.limit
    summary.total = pipeline.count_rows() if limit is None else limit
    logger.info("%s: %d rows to consider, %d already in the ledger at %s",
                job.name, summary.total, len(priors), ledger.url)

    rejects = pipeline.rejects_writer()
    batches = _Batches(job, pipeline, ledger, rejects, summary, started)
    try:
        for number, (batch, found_rejects) in enumerate(pipeline.batches()):
            batches.reject(found_rejects)
            if summary.stopped:
                break
            if len(batch):
                batches.submit(number, batch, priors)
            else:
                batches.report()
        batches.drain()
        has_finish = type(connector).finish is not BaseConnector.finish
        if has_finish:  # also after a stop: it may have loads to finish or a session to release
            try:
                summary.finish = finish_load.with_options(
                    task_run_name=f"{job.name}-{vendor}-finish", retries=job.retries,
                    retry_delay_seconds=job.retry_delay_seconds)(job, summary.run_id)
            except (AuthError, ConfigError):
                raise
            except Exception as exc:  # noqa: BLE001 - the loads stand; the finish step is retried next run
                summary.finish = {"error": str(exc)}
                logger.error("the finish step failed: %s", exc)
    except (AuthError, ConfigError) as exc:
        summary.error = str(exc)
        logger.error("stopped: %s", exc)
        batches.abandon()
    finally:
        rejects.close(failed=bool(summary.error))  # a refused run keeps the previous rejects file
    batches.report(final=True)
    for warning in pipeline.warnings:  # e.g. a manifest without a single row: never a silent success
        summary.extra.setdefault("warnings", []).append(warning)
        logger.warning("%s", warning)
    notes = getattr(connector, "notes", None)  # rows the vendor's prepare changed (not rejected)
    if notes:
        summary.extra["notes"] = dict(notes)
        for what, n in notes.items():
            logger.warning("%s: %d rows", what, n)
    summary.rejects_file = rejects.url if rejects.count else None
    ledger.compact([summary.run_id])
    complete = not (summary.error or summary.stopped or summary.failed or summary.pending)
    if incremental and limit is None and complete and pipeline.counts.newest is not None:
        ledger.set_watermark(pipeline.counts.newest.isoformat(), summary.run_id)
    create_table_artifact(table=summary.table(), key=_key(job.name, vendor, "summary"),
                          description=f"{job.name} -> {vendor}: run {summary.run_id}")
    if rejects.sample:
        create_markdown_artifact(markdown=_rejects_markdown(summary, rejects.sample), key=_key(job.name, vendor, "rejects"),
                                 description=f"{job.name} -> {vendor}: rejected and failed rows")
    if summary.exit_code == 1:
        logger.warning("%s -> %s finished with %d rejected, %d failed, %d pending rows%s", job.name, vendor,
                       summary.rejected, summary.failed, summary.pending,
                       f"; see {summary.rejects_file}" if summary.rejects_file else "")
    logger.info("%s -> %s: %d loaded, %d unchanged, %d rejected, %d failed, %d pending in %.1fs", job.name,
                vendor, summary.loaded, summary.unchanged, summary.rejected, summary.failed, summary.pending,
                summary.seconds)
    if summary.error:
        raise ConfigError(summary.error)
    return _final_state(summary)


@flow(
    name="sync-job",
    flow_run_name=lambda: _run_name(),
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    log_prints=False,
)
def sync_job(job_file: str, since: str | None = None, until: str | None = None,
             limit: int | None = None, full_refresh: bool = False) -> Any:
    """The deployment entrypoint: the job is read from ``job_file`` when the run starts (a path
    relative to the worker's working directory, an absolute path or any fsspec URL), so editing
    the YAML changes the next run without redeploying. Relative paths inside the job resolve
    against the job file's folder; ``env:`` references resolve in the worker's environment."""
    job = load_job(job_file)
    if job.runner != "threads":  # a subflow whose batches run on the job's Dask cluster
        return sync_flow(job)(job, since=since, until=until, limit=limit, full_refresh=full_refresh)
    return sync_assets.fn(job, since=since, until=until, limit=limit, full_refresh=full_refresh)


def task_runner(job: JobSpec) -> Any:
    """The task runner for ``job.runner``: threads in this process, or prefect-dask's
    ``DaskTaskRunner`` on a local cluster (``dask``: ``concurrency`` worker processes of one
    thread, at least 2, capped at the CPU count unless it is lower than 2) or on an existing
    scheduler (``dask://host:port``). Dask workers report task runs to the Prefect API in their
    own process: they need a real server (not ephemeral mode), and for a remote cluster the job's
    state, files and credentials must be reachable from the workers too."""
    if job.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=32)
    from prefect_dask import DaskTaskRunner

    address = job.runner.removeprefix("dask").removeprefix("://")
    if address:
        return DaskTaskRunner(address=f"tcp://{address}")
    import os

    workers = max(1, min(job.concurrency, max(2, os.cpu_count() or 2)))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def sync_flow(job: JobSpec) -> Any:
    """``sync_assets`` with the task runner the job asks for."""
    return sync_assets if job.runner == "threads" else sync_assets.with_options(task_runner=task_runner(job))
