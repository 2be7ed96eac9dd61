"""The load task: one Prefect task run per batch (never per asset); a thin wrapper of the loader."""

from __future__ import annotations

from typing import Any

import pandas as pd
from assetferry.connectors.core.budget import BudgetPlan, Budgets, limit_name, plan
from assetferry.connectors.core.errors import TransientError
from assetferry.connectors.core.job import JobSpec
from assetferry.connectors.core.ledger import Ledger, LedgerEntry
from assetferry.connectors.core.loader import BatchResult, Loader
from assetferry.connectors.pipeline import make_connector, state_options, state_url
from assetferry.connectors.vendors.base import BaseConnector
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


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
    share_budget(job, connector)
    ledger = Ledger(state_url(job, connector), state_options(job))
    known = dict(priors)
    known.update(ledger.batch_entries(run_id, number))
    with ledger.writer(run_id, number) as journal:
        result = Loader(connector).load(batch, known, journal, run_id)
    result.notes.update(getattr(connector, "notes", None) or {})  # this batch's connector only
    logger.info("batch %d: %s", number, ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "empty")
    return result


@task(cache_policy=NONE, retries=2, retry_delay_seconds=30, retry_condition_fn=transient_only)
def finish_load(job: JobSpec, run_id: str) -> dict[str, Any] | None:
    """The vendor's step after every batch (e.g. start an import job and poll it), if it has one."""
    connector = make_connector(job)
    share_budget(job, connector)
    if isinstance(connector, BaseConnector):
        connector.ledger = Ledger(state_url(job, connector), state_options(job))
    with connector.session() as http:
        return connector.finish(http, run_id)


# -- the vendor's rate budget shared across processes and machines -------------------------------
LEASE_TIMEOUT = 300.0  # seconds a lease may wait for the global limit before the batch fails (transient)


def shares_budget(job: JobSpec) -> bool:
    """The job's ``shared_budget``; by default on with the Dask runner (batches in other processes)."""
    return job.shared_budget if job.shared_budget is not None else job.runner.startswith("dask")


_CLIENTS: dict[int, Any] = {}  # one Prefect API client per process (pid), kept open


def _api() -> Any:
    import os

    client = _CLIENTS.get(os.getpid())
    if client is None:
        from prefect.client.orchestration import get_client

        client = _CLIENTS[os.getpid()] = get_client(sync_client=True)
        client.__enter__()
    return client


def _lease(name: str, slots: int) -> None:
    """Block until ``slots`` requests of the global limit ``name`` are granted; strict: a missing
    limit raises, never "no limit". Raises TimeoutError after ``LEASE_TIMEOUT`` seconds.

    Not ``prefect.concurrency.sync.rate_limit``: a refused attempt there comes back after a
    jittered Retry-After, and every refusal restarts the server's decay clock (it decays from
    the row's last update), so contending processes starve each other (40-80 % of the rate).
    Here a refused caller reads how many slots are still occupied (a read changes nothing) and
    sleeps until the bucket is empty, plus a little jitter: a refusal then comes right after
    another process's grant, when restarting the clock costs almost nothing."""
    import random
    import time as _time

    from prefect.exceptions import PrefectHTTPStatusError

    client = _api()
    deadline = _time.monotonic() + LEASE_TIMEOUT
    while True:
        try:
            granted = client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit").json()
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: not enough free slots yet
                raise
        else:
            if not granted:
                raise RuntimeError(f"the global concurrency limit {name} does not exist")
            return
        if _time.monotonic() > deadline:
            raise TimeoutError(f"no slot of {name} within {LEASE_TIMEOUT:.0f} s")
        limit = client.read_global_concurrency_limit_by_name(name)
        decay = limit.slot_decay_per_second or 1.0
        busy = max(0, limit.active_slots + slots - limit.limit)  # slots that must decay first
        _time.sleep(min(busy / decay, 10.0) + random.uniform(0.005, 0.5 / decay))


LEASE = Budgets(lease=_lease)


def share_budget(job: JobSpec, connector: Any) -> None:
    """Put the connector's local limiter behind the job's shared budget, if it shares one."""
    if shares_budget(job) and isinstance(connector, BaseConnector):
        connector.budgets = LEASE


def budget_plan(connector: Any) -> BudgetPlan | None:
    """The global limit a connector's rate settings call for (None: no paced window)."""
    if not isinstance(connector, BaseConnector):
        return None
    paced, _ = connector.windows()
    return plan(limit_name(connector.spec.name, connector.destination_key()), paced,
                min_interval=connector.min_interval())


def ensure_budget(connector: Any) -> BudgetPlan | None:
    """Create (or update to the job's settings) the vendor budget's Prefect global concurrency
    limit: capacity one block, ``slot_decay_per_second`` the planned rate. Runs in the flow before
    any batch; two jobs starting at once on one budget may race to create it (one wins, the other
    updates). Returns the plan (None: nothing to share)."""
    budget = budget_plan(connector)
    if budget is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for attempt in range(3):
            try:
                client.upsert_global_concurrency_limit_by_name(budget.name, budget.block,
                                                               slot_decay_per_second=budget.rate)
                break
            except Exception:
                if attempt == 2:
                    raise
    return budget
