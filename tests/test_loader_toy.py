"""The loader core with a vendor unlike Kontent (tests/toyvendor.py): batches of N per request,
per-index 422s, a 422 naming no row (bisected), a daily quota (rest pending), and a
non-idempotent create made safe by intent + reconcile. Nothing here touches the loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr

from assetferry.connectors import vendors
from assetferry.connectors.core.ledger import Ledger, entry
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.records import DuplicateTracker, canonicalize
from assetferry.connectors.sources.base import RecordChunk
from tests import kit, toyvendor


def connector(root: str, **settings: Any) -> toyvendor.ToyConnector:
    return toyvendor.ToyConnector(url=root, settings={"batch": 10, **settings},
                                  credentials={"api_key": SecretStr(toyvendor.TOY_KEY)})


def frame(names: list[str], tmp_path: Path) -> pd.DataFrame:
    raw = pd.DataFrame({"id": [f"R{i:03d}" for i in range(len(names))], "title": names})
    good, rejects = canonicalize(RecordChunk(raw, str(tmp_path / "m.csv"), 1), DuplicateTracker(),
                                 toyvendor.SPEC.required_columns)
    assert rejects.empty
    return good


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def stored(root: str) -> Counter[str]:
    return Counter(r["key"] for r in httpx.get(f"{root}/_sandbox/records").json()["records"])


def load(c: toyvendor.ToyConnector, rows: pd.DataFrame, ledger: Ledger, run: str = "run") -> Any:
    priors = ledger.load().get_many(rows["id"].tolist())
    with ledger.writer(run, 0) as journal:
        return Loader(c).load(rows, priors, journal, run)


def test_rows_travel_in_batches_of_n(toy: str, tmp_path: Path) -> None:
    rows = frame([f"n{i}" for i in range(25)], tmp_path)
    result = load(connector(toy), rows, Ledger(str(tmp_path / "s")))
    assert result.counts == {"loaded": 25}
    assert stats(toy)["by_route"] == {"create": 3}  # 10 + 10 + 5
    assert stored(toy) == {f"R{i:03d}": 1 for i in range(25)}


def test_per_index_rejects_name_exactly_those_rows_and_the_rest_is_resent(toy: str, tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(10)]
    names[3], names[7] = "bad three", "bad seven"
    result = load(connector(toy), frame(names, tmp_path), Ledger(str(tmp_path / "s")))
    assert result.counts == {"loaded": 8, "rejected": 2}
    assert {o.id: o.reason for o in result.outcomes} == {"R003": "name 'bad three' is not allowed",
                                                         "R007": "name 'bad seven' is not allowed"}
    assert {o.field for o in result.outcomes} == {"name"}
    assert stats(toy)["by_route"] == {"create": 2}  # the refused request, then the 8 good rows
    assert set(stored(toy)) == {f"R{i:03d}" for i in range(10)} - {"R003", "R007"}


def test_a_refusal_that_names_no_row_is_bisected_within_a_budget(toy: str, tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(10)]
    names[6] = "poison"
    result = load(connector(toy), frame(names, tmp_path), Ledger(str(tmp_path / "s")))
    assert result.counts == {"loaded": 9, "rejected": 1}
    assert [o.id for o in result.outcomes] == ["R006"]
    assert stats(toy)["by_route"]["create"] <= 1 + 2 * 4  # log2(10) rounded up levels of halves
    # With no budget, rows are never rejected blindly: they fail and the next run tries again.
    httpx.post(f"{toy}/_sandbox/reset")
    with Ledger(str(tmp_path / "t")).writer("r", 0) as journal:
        poor = Loader(connector(toy), split_budget=0).load(frame(names, tmp_path), {}, journal, "r")
    assert poor.counts == {"failed": 10}


def test_a_spent_quota_leaves_the_rest_pending_and_is_not_an_error(toy: str, tmp_path: Path) -> None:
    httpx.post(f"{toy}/_sandbox/limits", json={"daily": 15}).raise_for_status()
    ledger = Ledger(str(tmp_path / "s"))
    rows = frame([f"n{i}" for i in range(30)], tmp_path)
    result = load(connector(toy, inflight=1), rows, ledger)  # one unit at a time: an exact count
    assert result.counts == {"loaded": 10, "pending": 20}
    assert result.quota == "POST /items: daily limit reached" and result.resets_at == "2030-01-01T00:00:00+00:00"
    assert stats(toy)["by_route"] == {"create": 2}  # stopped at the first quota answer
    httpx.post(f"{toy}/_sandbox/limits", json={"daily": 1000})
    ledger.compact(["run"])
    again = load(connector(toy), rows, ledger, run="run2")
    assert again.counts == {"unchanged": 10, "loaded": 20}
    assert stored(toy) == {f"R{i:03d}": 1 for i in range(30)}


def test_intent_is_journaled_before_a_non_idempotent_send_and_reconciled_after_a_kill(
        toy: str, tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "s"))
    rows = frame([f"n{i}" for i in range(4)], tmp_path)
    # A run journaled its intent, the vendor created the items, then the process was killed
    # before the answer was journaled.
    with ledger.writer("killed", 0) as journal:
        for rid in rows["id"]:
            journal.record(entry(rid, "intent", "killed"))
    httpx.post(f"{toy}/items", headers={"X-Key": toyvendor.TOY_KEY},
               json={"items": [{"key": "R000", "name": "n0"}, {"key": "R001", "name": "n1"}]}).raise_for_status()
    result = load(connector(toy), rows, ledger, run="resume")
    assert result.counts == {"loaded": 4}
    assert stored(toy) == {"R000": 1, "R001": 1, "R002": 1, "R003": 1}  # found, not created again
    by_route = stats(toy)["by_route"]
    assert by_route["find"] == 4 and by_route["update"] == 2 and by_route["create"] == 2
    journal = next((tmp_path / "s" / "journal").glob("resume-*.jsonl")).read_text()
    assert journal.count('"status":"intent"') == 2 and journal.count('"status":"created"') == 2


def test_a_lost_reply_is_looked_up_not_resent_blindly(toy: str, tmp_path: Path) -> None:
    httpx.post(f"{toy}/_sandbox/faults", json={"status": 502, "count": 1, "when": "after", "route": "create"})
    result = load(connector(toy), frame([f"n{i}" for i in range(6)], tmp_path), Ledger(str(tmp_path / "s")))
    assert result.counts == {"loaded": 6}
    assert stored(toy) == {f"R{i:03d}": 1 for i in range(6)}
    assert stats(toy)["by_route"] == {"create": 1, "find": 6, "update": 6}


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_stops_cleanly_on_a_quota_with_the_rest_pending(toy: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from assetferry.connectors.core.job import load_job
    from assetferry.flows.sync import sync_assets

    vendors.register(toyvendor.SPEC)
    monkeypatch.setenv("TOY_KEY", toyvendor.TOY_KEY)
    httpx.post(f"{toy}/_sandbox/limits", json={"daily": 12}).raise_for_status()
    rows = [{"id": f"Q{i:03d}", "title": f"q{i}"} for i in range(40)]
    job = load_job(kit.write_job(tmp_path / "job.yaml", {
        "name": "quota", "source": {"url": str(kit.write_csv(tmp_path / "m.csv", rows))},
        "destination": {"vendor": "toy", "url": toy, "credentials": {"api_key": "env:TOY_KEY"},
                        "settings": {"batch": 5}},
        "state": str(tmp_path / "state"), "batch_size": 5, "concurrency": 1, "retry_delay_seconds": 0}))
    try:
        state = sync_assets(job, return_state=True)
        summary = state.result()
        assert state.name == "Partial" and "pending" in (state.message or "")
        assert (summary["loaded"], summary["pending"], summary["failed"]) == (10, 30, 0), summary
        assert summary["stopped"].startswith("quota") and summary["resets_at"] == "2030-01-01T00:00:00+00:00"
        assert summary["exit_code"] == 1 and summary["rejects_file"] is None  # pending is not rejected
        httpx.post(f"{toy}/_sandbox/limits", json={"daily": 1000})
        state = sync_assets(job, return_state=True)
        assert state.name == "Completed" and state.result()["loaded"] == 30
        assert stored(toy) == {r["id"]: 1 for r in rows}
    finally:
        vendors.unregister("toy")
