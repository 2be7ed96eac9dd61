"""The load task: one Prefect task run per batch (never per asset)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from connectors.core.errors import TransientError
from connectors.core.ledger import Ledger, LedgerEntry
from connectors.core.job import JobSpec
from connectors.pipeline import make_connector, state_options, state_url
from connectors.vendors.base import Outcome


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries a batch only for transient failures (429/5xx/network), never for a
    rejection or an auth/config error."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - anything else is final
        return False
    return False


@task(cache_policy=NONE, retries=2, retry_delay_seconds=30, retry_condition_fn=transient_only)
def load_batch(job: JobSpec, batch: pd.DataFrame, priors: dict[str, LedgerEntry], run_id: str,
               number: int) -> list[Outcome]:
    """Send one batch. Credentials are resolved here from the job's references (never passed as
    parameters). A retry of the same batch first reads what its earlier attempt journaled, so
    rows already loaded are not sent again."""
    logger = get_run_logger()
    connector = make_connector(job)
    ledger = Ledger(state_url(job, connector), state_options(job))
    known = dict(priors)
    known.update(ledger.batch_entries(run_id, number))
    with ledger.writer(run_id, number) as journal:
        outcomes = connector.load(batch, known, journal, run_id)
    counts = pd.Series([o.status for o in outcomes]).value_counts().to_dict() if outcomes else {}
    logger.info("batch %d: %s", number, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "empty")
    return outcomes
