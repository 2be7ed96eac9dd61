"""The load task: one Prefect task run per batch (never per asset); a thin wrapper of the loader."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from assetferry.connectors.core.errors import TransientError
from assetferry.connectors.core.job import JobSpec
from assetferry.connectors.core.ledger import Ledger, LedgerEntry
from assetferry.connectors.core.loader import BatchResult, Loader
from assetferry.connectors.pipeline import make_connector, state_options, state_url
from assetferry.connectors.vendors.base import BaseConnector


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries a batch only for transient failures (429/5xx/network), never for a
    rejection, a quota (``QuotaExhausted`` is not transient: the loader returns it as a result)
    or an auth/config error."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - anything else is final
        return False
    return False


@task(cache_policy=NONE, retries=2, retry_delay_seconds=30, retry_condition_fn=transient_only)
def load_batch(job: JobSpec, batch: pd.DataFrame, priors: dict[str, LedgerEntry], run_id: str,
               number: int) -> BatchResult:
    """Send one batch. Credentials are resolved here from the job's references (never passed as
    parameters). A retry of the same batch first reads what its earlier attempt journaled, so
    rows already loaded are not sent again and an ``intent`` is reconciled. Returns counts plus
    only the rows that did not load (rejected, failed, pending)."""
    logger = get_run_logger()
    connector = make_connector(job)
    ledger = Ledger(state_url(job, connector), state_options(job))
    known = dict(priors)
    known.update(ledger.batch_entries(run_id, number))
    with ledger.writer(run_id, number) as journal:
        result = Loader(connector).load(batch, known, journal, run_id)
    logger.info("batch %d: %s", number, ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "empty")
    return result


@task(cache_policy=NONE, retries=2, retry_delay_seconds=30, retry_condition_fn=transient_only)
def finish_load(job: JobSpec, run_id: str) -> dict[str, Any] | None:
    """The vendor's step after every batch (e.g. start an import job and poll it), if it has one."""
    connector = make_connector(job)
    if isinstance(connector, BaseConnector):
        connector.ledger = Ledger(state_url(job, connector), state_options(job))
    with connector.session() as http:
        return connector.finish(http, run_id)
