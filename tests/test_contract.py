"""The contract suite: every vendor of the registry (plus the toy vendor) passes the same tests
through the real flow against its simulator over real sockets: exactly once, a rerun sends
nothing, the vendor's reject reasons reach the rejects file, a throttle is honoured, an auth
failure stops the run, a dry run sends nothing, and faults both before the vendor acts and after
it stored the request (the reply lost) still leave every record exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from assetferry.connectors import vendors
from assetferry.connectors.core.errors import ConfigError
from assetferry.sandbox.server import running
from tests import kit, toyvendor
from tests.contract_kits import Kit, fault, load_kits, requests_seen

VENDORS = sorted({*vendors.names(), "toy"})
KITS = load_kits(VENDORS)


def test_every_registered_vendor_has_a_contract_kit() -> None:
    missing = [v for v in vendors.names() if v not in KITS]
    assert not missing, f"vendors without a contract kit (tests/kits/<vendor>.py): {missing}"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    from contextlib import ExitStack

    vendors.register(toyvendor.SPEC)
    with ExitStack() as stack:
        yield {name: stack.enter_context(running(k.app())) for name, k in KITS.items() if name in VENDORS}
    vendors.unregister("toy")


@pytest.fixture(params=[v for v in VENDORS if v in KITS])
def vendor(request: pytest.FixtureRequest, servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
           ) -> tuple[Kit, str]:
    k = KITS[request.param]
    root = servers[k.name]
    k.reset(root)
    for name, value in k.env.items():
        monkeypatch.setenv(name, value)
    return k, root


def _job(k: Kit, root: str, tmp_path: Path, rows: list[dict[str, Any]], **extra: Any) -> Any:
    from assetferry.connectors.core.job import load_job

    manifest = kit.write_csv(tmp_path / "manifest.csv", rows)
    data = {"name": "contract", "source": {"url": str(manifest)}, "destination": k.destination(root),
            "state": str(tmp_path / "state"), "batch_size": k.batch_size, "concurrency": 2,
            "retry_delay_seconds": 0, **extra}
    return load_job(kit.write_job(tmp_path / "job.yaml", data))


def _run(job: Any) -> dict[str, Any]:
    from assetferry.flows.sync import sync_assets

    return sync_assets(job)


pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_exactly_once_then_a_rerun_sends_nothing(vendor: tuple[Kit, str], tmp_path: Path) -> None:
    k, root = vendor
    rows = k.rows(tmp_path / "files", 12)
    job = _job(k, root, tmp_path, rows)
    summary = _run(job)
    assert summary["loaded"] == 12 and summary["exit_code"] == 0, summary
    assert k.stored(root) == {r["id"]: 1 for r in rows}
    before = requests_seen(root)
    again = _run(job)
    assert again["unchanged"] == 12 and again["loaded"] == 0
    assert requests_seen(root) == before  # nothing sent


def test_a_row_the_vendor_refuses_is_rejected_with_its_reason(vendor: tuple[Kit, str], tmp_path: Path) -> None:
    k, root = vendor
    rows = k.rows(tmp_path / "files", 6)
    rows[2] = k.refuse(rows[2])
    summary = _run(_job(k, root, tmp_path, rows))
    assert (summary["loaded"], summary["rejected"], summary["exit_code"]) == (5, 1, 1), summary
    assert set(k.stored(root)) == {r["id"] for i, r in enumerate(rows) if i != 2}
    rejects = pd.read_csv(summary["rejects_file"])
    assert rejects["id"].tolist() == [rows[2]["id"]]
    assert rejects["reason"][0] and "failed" not in rejects["reason"][0]


def test_throttling_is_honoured_and_nothing_is_lost(vendor: tuple[Kit, str], tmp_path: Path) -> None:
    k, root = vendor
    fault(root, status=429, count=3, retry_after=1, route=k.store_route)
    rows = k.rows(tmp_path / "files", 8)
    summary = _run(_job(k, root, tmp_path, rows))
    assert summary["loaded"] == 8, summary
    assert k.stored(root) == {r["id"]: 1 for r in rows}


def test_refused_credentials_stop_the_run(vendor: tuple[Kit, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    k, root = vendor
    for name, value in k.bad_env.items():
        monkeypatch.setenv(name, value)
    rows = k.rows(tmp_path / "files", 6)
    with pytest.raises(ConfigError) as info:
        _run(_job(k, root, tmp_path, rows))
    assert "refused" in str(info.value) and k.bad_env[next(iter(k.bad_env))] not in str(info.value)
    assert not k.stored(root)


def test_a_dry_run_sends_nothing(vendor: tuple[Kit, str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    k, root = vendor
    rows = k.rows(tmp_path / "files", 5)
    _job(k, root, tmp_path, rows)
    before = requests_seen(root, but=k.read_routes)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--dry-run", "--plan",
                                      str(tmp_path / "plan.jsonl")])
    assert result.exit_code == 0, result.output
    assert requests_seen(root, but=k.read_routes) == before  # nothing sent (reads of the environment aside)
    assert not k.stored(root)
    planned = [i for line in (tmp_path / "plan.jsonl").read_text().splitlines()
               for i in __import__("json").loads(line)["ids"]]
    assert planned == [r["id"] for r in rows]


@pytest.mark.parametrize("when", ["before", "after"])
def test_faults_before_and_after_the_vendor_stored_leave_each_record_once(
        vendor: tuple[Kit, str], tmp_path: Path, when: str) -> None:
    k, root = vendor
    fault(root, status=500, count=2, when=when, route=k.store_route)
    rows = k.rows(tmp_path / "files", 10)
    summary = _run(_job(k, root, tmp_path, rows))
    assert summary["loaded"] == 10, summary
    assert k.stored(root) == {r["id"]: 1 for r in rows}  # a lost reply never makes a duplicate
