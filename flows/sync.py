"""The ``sync_assets`` flow: stream the source, load batches concurrently, ledger, rejects, report."""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from connectors.core.errors import AuthError, ConfigError, TransientError
from connectors.core.job import JobSpec
from connectors.core.ledger import new_run_id
from connectors.core.records import rejects_frame
from connectors.pipeline import Pipeline, make_connector
from connectors.vendors.base import Outcome
from flows import secrets  # noqa: F401 - registers the secret: credential scheme
from tasks.load import load_batch

#: Called after every batch with the running summary; the CLI hangs its progress bar here.
ProgressHook = Callable[["RunSummary"], None]
PROGRESS_HOOKS: list[ProgressHook] = []


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
    stopped: str | None = None  # why the run stopped early (vendor down); the rest is pending
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

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
        rows = [("loaded", self.loaded), ("unchanged", self.unchanged), ("rejected", self.rejected),
                ("failed", self.failed), ("pending", self.pending), ("outside window", self.outside_window),
                ("bytes sent", self.bytes_sent), ("seconds", round(self.seconds, 1))]
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


@flow(
    name="sync-assets",
    flow_run_name="{job.name}-to-{job.destination.vendor}",
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    log_prints=False,
    validate_parameters=True,
)
def sync_assets(job: JobSpec, since: str | None = None, until: str | None = None,
                limit: int | None = None) -> dict[str, Any]:
    """Load every record of ``job.source`` into ``job.destination``.

    Re-runs skip unchanged records (ledger); a killed run resumes without duplicates; rejected
    and failed rows go to ``<state>/<job>/<vendor>-<dest>/rejects.csv``. Returns the summary
    (``exit_code`` 0/1/2). Concurrency: at most ``job.concurrency`` batches in flight.
    """
    logger = get_run_logger()
    started = time.monotonic()
    run_id = new_run_id()
    vendor = job.destination.vendor
    summary = RunSummary(job=job.name, vendor=vendor, run_id=run_id)
    connector = make_connector(job)  # resolves credentials: fails fast on a missing one
    pipeline = Pipeline(job, connector, since=since, until=until, limit=limit)
    ledger = pipeline.ledger()
    summary.state = ledger.url
    priors = ledger.load()
    summary.total = pipeline.count_rows() if limit is None else limit
    logger.info("%s: %d rows to consider, %d already in the ledger at %s",
                job.name, summary.total, len(priors), ledger.url)
    rejects = pipeline.rejects_writer()
    progress_id = create_progress_artifact(progress=0.0, key=_key(job.name, vendor, "progress"),
                                           description=f"{job.name} -> {vendor}")

    inflight: deque[tuple[int, pd.DataFrame, PrefectFuture]] = deque()
    counts: Counter[str] = Counter()

    def collect(number: int, batch: pd.DataFrame, fut: PrefectFuture) -> None:
        try:
            outcomes: list[Outcome] = fut.result()
        except (AuthError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - the batch failed after its retries
            done = {e.id for e in ledger.batch_entries(run_id, number).values() if e.status == "loaded"}
            reason = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TransientError) and not summary.stopped:
                # Retried by the HTTP layer and by Prefect and still failing: the vendor is down.
                # Stop sending; what was not attempted stays pending for the next run.
                summary.stopped = f"{vendor} looks unavailable after retries ({exc})"
                logger.error("stopping early: %s", summary.stopped)
            outcomes = [Outcome(i, "loaded") if i in done else Outcome(i, "failed", reason=reason)
                        for i in batch["id"]]
        for o in outcomes:
            counts[o.status] += 1
            summary.bytes_sent += o.bytes_sent
        rejects.write(_failed_rejects(batch, outcomes))
        summary.batches += 1
        _update(summary, counts, pipeline, started)
        update_progress_artifact(progress_id, progress=100.0 * summary.done / max(summary.total, 1))
        for hook in PROGRESS_HOOKS:
            hook(summary)

    load = load_batch.with_options(retries=job.retries, retry_delay_seconds=job.retry_delay_seconds)
    try:
        for number, (batch, found_rejects) in enumerate(pipeline.batches()):
            rejects.write(found_rejects)
            counts["rejected"] += len(found_rejects)
            if len(batch):
                batch_priors = {i: priors[i] for i in batch["id"] if i in priors}
                fut = load.with_options(task_run_name=f"{job.name}-{vendor}-batch-{number}").submit(
                    job, batch, batch_priors, run_id, number)
                inflight.append((number, batch, fut))
            else:
                _update(summary, counts, pipeline, started)
                for hook in PROGRESS_HOOKS:
                    hook(summary)
            while len(inflight) >= job.concurrency:
                collect(*inflight.popleft())
            if summary.stopped:
                break
        while inflight:
            collect(*inflight.popleft())
    except (AuthError, ConfigError) as exc:
        summary.error = str(exc)
        logger.error("stopped: %s", exc)
        for _, _, fut in inflight:
            fut.wait()
    finally:
        rejects.close()
    if summary.stopped:
        counts["pending"] = max(0, summary.total - summary.done)
    _update(summary, counts, pipeline, started)
    summary.rejects_file = rejects.url if rejects.count else None
    ledger.compact()
    create_table_artifact(table=summary.table(), key=_key(job.name, vendor, "summary"),
                          description=f"{job.name} -> {vendor}: run {run_id}")
    update_progress_artifact(progress_id, progress=100.0)
    logger.info("%s -> %s: %d loaded, %d unchanged, %d rejected, %d failed in %.1fs", job.name, vendor,
                summary.loaded, summary.unchanged, summary.rejected, summary.failed, summary.seconds)
    if summary.error:
        raise ConfigError(summary.error)
    return summary.to_dict()


def _update(summary: RunSummary, counts: Counter[str], pipeline: Pipeline, started: float) -> None:
    for status in ("loaded", "unchanged", "rejected", "failed", "pending"):
        setattr(summary, status, counts[status])
    summary.outside_window = pipeline.counts.outside_window
    summary.seconds = time.monotonic() - started
