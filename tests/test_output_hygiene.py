"""Output hygiene and checks before sending (issue 18): control characters never reach a terminal
raw; URL passwords and signatures are masked in output, plan, rejects, logs and Prefect's flow-run
parameters; every vendor checks title and field lengths and characters before sending; 0-byte
files are counted (or rejected by a setting); a wholly failed batch keeps its unchanged rows
unchanged; a manifest in ``/`` needs explicit allowed roots; a refused connection says so."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from assetferry.connectors.core.errors import ConfigError
from assetferry.connectors.core.files import AccessPolicy, FileStore
from assetferry.connectors.core.job import load_job, parse_job
from assetferry.connectors.core.ledger import RejectsWriter
from assetferry.connectors.core.loader import Loader
from assetferry.connectors.core.records import REJECT_COLUMNS
from assetferry.connectors.core.redact import (
    RedactingFilter,
    clean,
    escape_control,
    mask_secrets,
)
from assetferry.connectors.pipeline import Pipeline, make_connector
from assetferry.flows.cli import app
from pydantic import SecretStr
from typer.testing import CliRunner

from tests import kit
from tests.contract_kits import load_kits

SIG = "Zm9vYmFyU0lHTkFUVVJF0123"
PRESIGNED = ("https://bucket.s3.eu-west-1.amazonaws.com/a%20b.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential=AKIAFAKE%2F20260101&X-Amz-Date=20260101T000000Z&X-Amz-Expires=600"
             f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG}")


# -- the helpers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, secret", [
    (PRESIGNED, SIG),
    ("https://admin:Pa55w0rd-XYZ@files.example.com/a.png", "Pa55w0rd-XYZ"),
    ("https://acct.blob.core.windows.net/c/a.png?sv=2020-08-04&sig=AzureSAS%2Bsig%3D", "AzureSAS"),
    ("https://storage.googleapis.com/b/o?X-Goog-Signature=goog0123abcd&x=1", "goog0123abcd"),
    ("https://cdn.example.com/a.png?token=tok-123456&size=2", "tok-123456"),
    ('{"file": "https://h.example/a?sig=inJSON999"}', "inJSON999"),
    ("failed: GET https://u:secretpw@h.example/x?Signature=sig2 (timeout)", "secretpw"),
    ("s3://bucket/key?X-Amz-Security-Token=FwoGZXIvYXdzEFAKE", "FwoGZXIvYXdzEFAKE"),
])
def test_mask_secrets_masks_passwords_and_signatures_and_keeps_the_rest(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked and "***" in masked
    assert mask_secrets(masked) == masked  # idempotent
    host = text.split("://", 1)[1].split("/", 1)[0].split("@")[-1] if "://" in text else ""
    assert host in masked


def test_mask_secrets_leaves_ordinary_text_and_urls_alone() -> None:
    for text in ("https://cdn.example.com/a.png?width=200&lang=en", "id=42, title=a=b", "plain text", "",
                 "https://user@host.example/x"):
        assert mask_secrets(text) == text


def test_escape_control_makes_every_control_character_visible() -> None:
    evil = "title \x1b[2J\x1b]0;pwned\x07 \r overwrite \x9b31m \u202egnp.exe \x00 end"
    shown = escape_control(evil)
    assert shown == ("title \\x1b[2J\\x1b]0;pwned\\x07 \\r overwrite \\x9b31m \\u202egnp.exe \\x00 end")
    assert escape_control("two\nlines\tand tab") == "two\nlines\tand tab"
    assert escape_control("two\nlines", keep_newlines=False) == "two\\nlines"
    assert clean("x\x1b https://u:pw@h/") == "x\\x1b https://u:***@h/"


def test_the_log_filter_masks_and_escapes_every_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("assetferry.test-hygiene")
    logger.addHandler(handler)
    try:
        logger.warning("fetching %s failed for %s", PRESIGNED, "id\x1b[31m")
        try:
            raise RuntimeError(f"cannot fetch {PRESIGNED}")
        except RuntimeError:
            logger.exception("a batch failed")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert SIG not in line and line.count("X-Amz-Signature=***") == 2, line
    assert "\x1b" not in line and "id\\x1b[31m" in line
    assert "RuntimeError: cannot fetch https://bucket" in line  # the traceback is kept, masked


# -- Prefect parameters, rejects file, plan --------------------------------------------------------------
def test_the_flow_run_parameters_prefect_stores_carry_no_signature_or_password(tmp_path: Path) -> None:
    from assetferry.flows.sync import sync_assets

    data = kit.job_dict(f"https://reader:ManifestPw0rd@files.example.com/m.csv?X-Amz-Signature={SIG}",
                        "http://127.0.0.1:9", tmp_path / "state")
    data["destination"]["url"] = "http://127.0.0.1:9/v2?token=DestToken42"
    data["source"]["allowed_hosts"] = [f"https://cdn.example.com/assets/?sig={SIG}"]
    job = parse_job(data, where="test")

    stored = json.dumps(sync_assets.serialize_parameters({"job": job, "since": None}))  # what Prefect keeps

    for secret in (SIG, "ManifestPw0rd", "DestToken42"):
        assert secret not in stored
    assert "files.example.com/m.csv" in stored and "reader:***@" in stored
    assert job.source.url.endswith(SIG)  # the run itself still has the real URL
    assert job.destination.url.endswith("DestToken42")


def test_the_rejects_file_masks_signatures_in_every_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"source": [f"s3://b/m.csv?X-Amz-Signature={SIG}"], "row": [1], "id": ["a"],
                          "field": ["file"], "reason": [f"cannot open https://u:Secr3tPw@h/x?sig={SIG}"],
                          "record": [json.dumps({"file": PRESIGNED})]})
    writer = RejectsWriter(str(tmp_path / "rejects.csv"), REJECT_COLUMNS)
    writer.write(frame)
    writer.close()
    text = (tmp_path / "rejects.csv").read_text()
    assert SIG not in text and "Secr3tPw" not in text
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert json.loads(row["record"])["file"].endswith("X-Amz-Signature=***")
    assert writer.sample[0]["reason"].startswith("cannot open https://u:***@h/x?sig=***")


def _csv_job(tmp_path: Path, root: str, rows: list[dict[str, Any]], **settings: Any) -> Path:
    kit.write_csv(tmp_path / "m.csv", rows)
    data = kit.job_dict("m.csv", root, Path("state"), settings={"requests_per_second": 100,
                                                                 "requests_per_minute": 6000, **settings})
    return kit.write_job(tmp_path / "job.yaml", data)


def test_cli_tables_messages_and_rejects_escape_control_characters_and_mask_urls(
        kontent: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 2)
    rows += [{"id": "e\x1b[31m\x07", "title": "t", "file": rows[0]["file"]},
             {"id": "signed", "title": "t", "file": PRESIGNED},
             {"id": "[link=http://evil.example]click[/link]", "title": "t", "file": "files/none.png"}]
    job = _csv_job(tmp_path, kontent, rows)
    for args in (["validate", str(job)], ["run", str(job), "--dry-run"], ["validate", str(job), "--output", "json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert SIG not in result.output
        if "json" not in args:  # shown escaped (the table may wrap the cell), markup shown literally
            assert "e\\x1b[31m\\x07" in result.output, result.output
            assert "[link" in result.output, result.output


def test_the_dry_run_writes_every_request_and_says_where(kontent: str, tmp_path: Path) -> None:
    rows = kit.make_rows(tmp_path / "files", 12)
    job = _csv_job(tmp_path, kontent, rows)

    result = CliRunner().invoke(app, ["run", str(job), "--dry-run"])

    assert result.exit_code == 0, result.output
    plan = tmp_path / "state" / "e2e" / f"kontent-{kit.ENV}" / "plan.jsonl"
    assert str(plan) in "".join(result.output.split())
    items = [json.loads(line) for line in plan.read_text().splitlines()]
    assert sorted(i for item in items for i in item["ids"]) == sorted(r["id"] for r in rows)
    assert all(item["requests"] for item in items)
    assert "every request" in CliRunner().invoke(app, ["run", "--help"]).output
    answer = json.loads(CliRunner().invoke(app, ["run", str(job), "--dry-run", "--output", "json"]).output)
    assert answer["plan_file"] == str(plan)
    refused = CliRunner().invoke(app, ["run", str(job), "--plan", str(tmp_path / "p.jsonl")])
    assert refused.exit_code == 2 and "--dry-run" in refused.output and not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("command", ["validate", "status", "verify", "backfill"])
def test_every_command_refuses_an_unknown_output_and_answers_json_errors_as_json(
        tmp_path: Path, command: str) -> None:
    extra = ["--since", "2026-01-01", "--until", "2026-01-02"] if command == "backfill" else []
    bad = CliRunner().invoke(app, [command, str(tmp_path / "absent.yaml"), "--output", "yaml", *extra])
    assert bad.exit_code == 2 and "invalid --output" in bad.output
    missing = CliRunner().invoke(app, [command, str(tmp_path / "absent.yaml"), "--output", "json", *extra])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["exit_code"] == 2


# -- checks before sending, per vendor ---------------------------------------------------------------------
VENDOR_KITS = {name: k for name, k in load_kits(["kontent", "esploro", "mediapocket", "actionhub", "wordbee"]).items()}


@pytest.mark.parametrize("vendor", sorted(VENDOR_KITS))
def test_every_vendor_checks_title_and_field_lengths_and_characters(vendor: str, tmp_path: Path) -> None:
    k = VENDOR_KITS[vendor]
    base = k.rows(tmp_path / "files", 5)
    rows = [dict(base[0]), {**base[1], "title": "T" * 100_000}, {**base[2], "title": "bad \x1b[2J title"},
            {**base[3], "description": "D" * 20_000}, {**base[4], "note": "ok\tbut\x00nul"}]
    for r in rows:
        r.setdefault("description", "fine")
        r.setdefault("note", "fine")
    kit.write_csv(tmp_path / "m.csv", rows)
    job = parse_job({"name": "checks", "source": {"url": str(tmp_path / "m.csv")},
                     "destination": k.destination("http://127.0.0.1:9"), "state": str(tmp_path / "state")},
                    where="test")
    pipeline = Pipeline(job, make_connector(job, credentials={}))

    ready = pd.concat([r for r, _ in pipeline.prepared()])
    rejects = pd.concat([x for _, x in Pipeline(job, make_connector(job, credentials={})).prepared()])

    by_id = {r["id"]: (r["field"], r["reason"]) for r in rejects.to_dict("records")}
    assert base[0]["id"] in set(ready["id"]), by_id
    assert by_id[base[1]["id"]][0] == "title" and "characters" in by_id[base[1]["id"]][1]
    assert "accepts at most" in by_id[base[1]["id"]][1]
    assert by_id[base[2]["id"]] == ("title", "title contains control characters")
    assert by_id[base[3]["id"]][0] == "description" and "max_text_chars" in by_id[base[3]["id"]][1]
    assert by_id[base[4]["id"]] == ("note", "note contains control characters")


def test_documented_title_limits_are_the_defaults_and_cannot_be_raised() -> None:
    from assetferry.connectors.vendors import vendor_spec

    assert vendor_spec("mediapocket").settings.model_fields["max_title_chars"].default == 255
    assert vendor_spec("actionhub").settings.model_fields["max_title_chars"].default == 124
    assert vendor_spec("kontent").settings.model_fields["max_title_chars"].default == 1000
    with pytest.raises(ConfigError, match="max_title_chars"):
        parse_job({"name": "x", "source": {"url": "m.csv"},
                   "destination": {**VENDOR_KITS["mediapocket"].destination("http://h"),
                                   "settings": {"max_title_chars": 256}}}, where="t")


# -- files: 0 bytes, a manifest in /, a refused connection ----------------------------------------------
@pytest.mark.parametrize("reject", [False, True])
def test_a_zero_byte_file_is_counted_or_rejected_by_the_setting(kontent: str, tmp_path: Path, reject: bool) -> None:
    rows = kit.make_rows(tmp_path / "files", 2)
    (tmp_path / "files" / "empty.png").write_bytes(b"")
    rows.append({"id": "empty", "title": "t", "file": str(tmp_path / "files" / "empty.png")})
    job = _csv_job(tmp_path, kontent, rows, reject_empty_files=reject)
    for args in (["validate", str(job)], ["run", str(job), "--dry-run"]):
        answer = json.loads(CliRunner().invoke(app, [*args, "--output", "json"]).output)
        if reject:
            assert [(r["id"], r["reason"]) for r in answer["rejects"]] == [
                ("empty", "file is empty (0 bytes; destination.settings.reject_empty_files is on)")]
        else:
            assert answer["rejected"] == 0 and sum(answer["would"].values()) == 3
            assert answer["notes"] == {"empty files (0 bytes) sent": 1}, answer
        table = CliRunner().invoke(app, args).output
        assert ("empty files (0 bytes) sent: 1 rows" in " ".join(table.split())) != reject


def test_a_manifest_in_the_root_folder_needs_explicit_allowed_roots(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allowed_roots"):
        AccessPolicy.build("/manifest.csv")
    with pytest.raises(ConfigError, match="allowed_roots"):
        AccessPolicy.build("file:///*.csv")
    assert AccessPolicy.build("/manifest.csv", [str(tmp_path)]).roots == (f"file://{tmp_path}",)
    assert AccessPolicy.build("s3://bucket/m.csv").roots == ("s3://bucket",)  # a bucket is not "/"


def test_a_refused_connection_is_reported_as_such_not_as_a_missing_file() -> None:
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    store = FileStore(policy=AccessPolicy.build("/tmp/x/m.csv", None, [f"127.0.0.1:{port}"]))
    info = store.stat(f"http://127.0.0.1:{port}/a.png")
    assert info.error == "cannot connect to the host (connection refused)"


# -- a wholly failed batch -----------------------------------------------------------------------------------
def test_a_wholly_failed_batch_keeps_rows_the_ledger_holds_unchanged(kontent: str, tmp_path: Path) -> None:
    from assetferry.flows.sync import RunSummary, _Batches

    rows = kit.make_rows(tmp_path / "files", 3)
    job = load_job(_csv_job(tmp_path, kontent, rows))
    connector = make_connector(job, credentials={"api_key": SecretStr(kit.KEY)})
    pipeline = Pipeline(job, connector)
    ledger = pipeline.ledger()
    batch, _ = next(pipeline.batches())
    with ledger.writer("run-1", 0) as journal:
        assert Loader(connector).load(batch, {}, journal, "run-1").counts == {"loaded": 3}
    kit.write_csv(tmp_path / "m.csv", rows + kit.make_rows(tmp_path / "files", 1, start=3))
    pipeline = Pipeline(job, connector)
    batch, _ = next(pipeline.batches())
    batches = object.__new__(_Batches)  # the collector alone, without a Prefect run around it
    batches.ledger, batches.pipeline = ledger, pipeline
    batches.summary = RunSummary(job=job.name, vendor="kontent", run_id="run-2")
    batches.logger = logging.getLogger("assetferry.test")

    result = batches._failed_batch(0, batch, RuntimeError("the batch broke"))

    assert result.counts == {"unchanged": 3, "failed": 1}, result.counts
    [failed] = result.outcomes
    assert failed.id == "A-0003" and "RuntimeError: the batch broke" in failed.reason


def test_demo_validates_and_honours_output_too() -> None:
    bad = CliRunner().invoke(app, ["demo", "kontent", "--output", "yaml"])
    assert bad.exit_code == 2 and "invalid --output" in bad.output
    unknown = CliRunner().invoke(app, ["demo", "no-such-vendor", "--output", "json"])
    assert unknown.exit_code == 2 and "no sandbox" in json.loads(unknown.stdout)["error"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_summary_counts_zero_byte_files_and_warns_of_an_empty_manifest(kontent: str, tmp_path: Path) -> None:
    """The batches stat the files, not the flow: what their connectors counted reaches the run's
    summary (and the CLI table); a manifest without rows is a warning there, not a silent success."""
    from assetferry.flows.cli import _summary_table
    from assetferry.flows.sync import sync_assets
    from rich.console import Console

    rows = kit.make_rows(tmp_path / "files", 3)
    (tmp_path / "files" / "empty.png").write_bytes(b"")
    rows.append({"id": "empty", "title": "t", "file": str(tmp_path / "files" / "empty.png")})
    summary = sync_assets(load_job(_csv_job(tmp_path, kontent, rows)))
    assert summary["loaded"] == 4 and summary["extra"]["notes"] == {"empty files (0 bytes) sent": 1}, summary
    console = Console(width=200, record=True)
    console.print(_summary_table(summary))
    assert "empty files (0 bytes) sent: 1 rows" in console.export_text()

    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "m.csv").write_text("id,title,file\n")
    data = kit.job_dict("m.csv", kontent, Path("state"))
    summary = sync_assets(load_job(kit.write_job(tmp_path / "none" / "job.yaml", data)))
    assert summary["loaded"] == 0 and summary["exit_code"] == 0
    assert any("no rows" in w for w in summary["extra"]["warnings"]), summary
