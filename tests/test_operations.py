"""Backfills by window, status from the ledger, run names with the window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assetferry.connectors.core.lock import RunLock
from assetferry.flows.cli import _windows, app
from tests import kit


def test_windows_cut_the_range_in_order() -> None:
    got = _windows("2026-01-01", "2026-01-20", "7d")
    assert [(a[:10], b[:10]) for a, b in got] == [("2026-01-01", "2026-01-08"), ("2026-01-08", "2026-01-15"),
                                                  ("2026-01-15", "2026-01-20")]
    result = CliRunner().invoke(app, ["backfill", "nowhere.yaml", "--since", "2026-01-01", "--until", "2026-01-02",
                                      "--window", "soon"])
    assert result.exit_code == 2


@pytest.mark.usefixtures("prefect_harness")
def test_a_local_backfill_loads_each_window_in_order_then_status_reports(kontent: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 9)
    for i, r in enumerate(rows):
        r["updated_at"] = f"2026-01-{1 + i * 2:02d}T12:00:00Z"  # Jan 1 .. Jan 17
    rows[4]["folder"] = "no-such-folder"  # the vendor refuses one row
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", rows)), kontent, tmp_path / "state", name="backfill",
        settings={"requests_per_second": 100, "requests_per_minute": 6000}))
    kit.set_limits(kontent, 1000, 100_000)
    result = CliRunner().invoke(app, ["backfill", str(job), "--since", "2026-01-01", "--until", "2026-01-19",
                                      "--window", "6d", "--output", "json"])
    assert result.exit_code == 1, result.output  # one window had a rejected row
    windows = json.loads(result.output[result.output.index("["):])
    assert [(w["since"][:10], w["until"][:10]) for w in windows] == [
        ("2026-01-01", "2026-01-07"), ("2026-01-07", "2026-01-13"), ("2026-01-13", "2026-01-19")]
    assert [w["loaded"] for w in windows] == [3, 2, 3] and [w["rejected"] for w in windows] == [0, 1, 0]
    assert kit.stats(kontent)["assets"] == 8

    status = CliRunner().invoke(app, ["status", str(job), "--output", "json"])
    assert status.exit_code == 0, status.output
    info = json.loads(status.output)
    # the row with an unknown folder was refused before its file was uploaded (Kontent preflight)
    assert info["statuses"] == {"loaded": 8} and info["records"] == 8
    assert info["rejected_last_run"] is None  # the last window rejected nothing
    assert info["running"] is None and info["last_run"]
    from assetferry.connectors.core.job import load_job
    from assetferry.connectors.pipeline import make_connector, state_url

    spec = load_job(job)
    with RunLock(state_url(spec, make_connector(spec)), "nightly"):
        busy = json.loads(CliRunner().invoke(app, ["status", str(job), "--output", "json"]).output)
        assert "nightly" in busy["running"]


def test_run_names_carry_the_window() -> None:
    from assetferry.flows.sync import _window_label

    assert _window_label("2026-01-01T00:00:00+00:00", "2026-01-08T00:00:00+00:00") == \
        "2026-01-01T000000..2026-01-08T000000"
    assert _window_label(None, None) == ""


@pytest.mark.usefixtures("prefect_harness")
def test_runs_are_incremental_after_a_complete_run_and_full_refresh_considers_all(kontent: str,
                                                                                  tmp_path: Path) -> None:
    from assetferry.connectors.core.job import load_job
    from assetferry.flows.sync import sync_assets

    rows = kit.make_rows(tmp_path / "files", 6)
    for i, r in enumerate(rows):
        r["updated_at"] = f"2026-03-0{i + 1}T00:00:00Z"
    rows[5]["updated_at"] = ""  # no updated_at: always considered
    manifest = tmp_path / "m.csv"
    job_file = kit.write_job(tmp_path / "job.yaml", kit.job_dict(str(kit.write_csv(manifest, rows)), kontent,
                                                                 tmp_path / "state"))
    kit.set_limits(kontent, 1000, 100_000)
    job = load_job(job_file)
    first = sync_assets(job)
    assert first["loaded"] == 6 and first["watermark"] is None
    rows.append({**kit.make_rows(tmp_path / "files", 1, start=50)[0], "updated_at": "2026-03-09T00:00:00Z"})
    rows[0]["title"] = "changed but not re-dated"  # an incremental run cannot see this one
    kit.write_csv(manifest, rows)
    second = sync_assets(job)
    assert second["watermark"].startswith("2026-03-05")  # the newest updated_at of the first run
    assert (second["loaded"], second["unchanged"], second["outside_window"]) == (1, 2, 4), second
    third = sync_assets(job, full_refresh=True)
    assert (third["loaded"], third["unchanged"]) == (1, 6), third  # the re-titled row, found at last

    # the dry run shows what the incremental run would do; validate and json output
    dry = CliRunner().invoke(app, ["run", str(job_file), "--dry-run", "--output", "json"])
    assert dry.exit_code == 0, dry.output
    info = json.loads(dry.output)
    assert info["watermark"] and info["outside_window"] == 5 and info["unchanged"] == 2
    valid = json.loads(CliRunner().invoke(app, ["validate", str(job_file), "--output", "json"]).output)
    assert valid["unchanged"] == 7 and valid["would"] == {}  # validate sees the ledger too


def test_cli_refuses_options_that_only_make_sense_together(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "job.yaml", "--plan", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and "add --dry-run" in result.output
    result = CliRunner().invoke(app, ["run", "job.yaml", "--output", "yaml"])
    assert result.exit_code == 2 and "invalid --output" in result.output
