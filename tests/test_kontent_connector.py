"""The Kontent connector's read side against the simulator: listing and lookups."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from assetferry.connectors.core.errors import TransientError
from assetferry.connectors.core.files import FileInfo
from assetferry.connectors.core.ledger import entry
from assetferry.connectors.vendors.base import Row, Unit
from assetferry.connectors.vendors.kontent import (
    KontentConnector,
    external_id_for,
    parse_error,
    term_codename,
)
from tests import kit


def connector(root: str, **settings: object) -> KontentConnector:
    return KontentConnector(url=f"{root}/v2", settings={"environment_id": kit.ENV, **settings},
                            credentials={"api_key": SecretStr(kit.KEY)})


def upload_and_create(root: str, n: int, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {kit.KEY}"}
    with httpx.Client(base_url=f"{root}/v2/projects/{kit.ENV}", headers=headers) as c:
        for i in range(n):
            ref = c.post(f"/files/f{i}.txt", content=b"x" * (i + 1),
                         headers={"Content-Type": "text/plain"}).json()
            c.put(f"/assets/external-id/ext-{i}", json={"file_reference": ref, "title": f"t{i}"}).raise_for_status()


def test_iter_assets_follows_x_continuation_over_every_page(kontent: str, tmp_path: Path) -> None:
    kit.set_limits(kontent, 10_000, 100_000)
    upload_and_create(kontent, 120, tmp_path)  # the simulator pages by 50: three pages
    got = [a["external_id"] for a in connector(kontent).iter_assets()]
    assert sorted(got) == sorted(f"ext-{i}" for i in range(120))


def test_lookup_finds_existing_and_skips_missing(kontent: str, tmp_path: Path) -> None:
    kit.set_limits(kontent, 200, 12000)
    upload_and_create(kontent, 2, tmp_path)
    found = connector(kontent).find(["ext-0", "ext-1", "never-loaded"])
    assert set(found) == {"ext-0", "ext-1"}
    assert found["ext-1"]["title"] == "t1"


def test_a_repeated_continuation_token_stops_the_listing() -> None:
    # A server bug the simulator cannot show: the same token twice would loop forever.
    page = {"assets": [{"id": "a"}], "pagination": {"continuation_token": "same", "next_page": "x"}}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=page))
    c = KontentConnector(url="https://manage.kontent.ai/v2", settings={"environment_id": kit.ENV},
                         credentials={"api_key": SecretStr("k")}, transport=transport)
    with pytest.raises(TransientError, match="continuation token twice"):
        list(c.iter_assets())


def test_error_bodies_are_parsed_into_one_readable_line() -> None:
    body = {"request_id": "r-1", "error_code": 5, "message": "Invalid body.",
            "validation_errors": [{"message": "Language 'xx' not found."}]}
    text = parse_error(httpx.Response(400, json=body))
    assert text == "Kontent 400 (error_code 5): Invalid body.; Language 'xx' not found. (request_id r-1)"
    assert parse_error(httpx.Response(502, text="<html>bad gateway</html>")).startswith("Kontent 502:")


def test_resume_after_upload_reuses_the_file_reference(kontent: str, tmp_path: Path) -> None:
    """A run killed between the upload and the upsert left an ``uploaded`` ledger line: the
    resumed run sends only the upsert, with the remembered file reference."""
    import pandas as pd

    from assetferry.connectors.core.ledger import Ledger, entry
    from assetferry.connectors.core.loader import Loader
    from assetferry.connectors.core.records import DuplicateTracker, canonicalize
    from assetferry.connectors.sources.base import RecordChunk

    kit.set_limits(kontent, 1000, 100_000)
    rows = kit.make_rows(tmp_path / "files", 1)
    c = connector(kontent)
    good, _ = canonicalize(RecordChunk(pd.DataFrame(rows), str(tmp_path / "m.csv"), 1), DuplicateTracker())
    ready, _ = c.prepare(good)
    ledger = Ledger(str(tmp_path / "state"))
    todo, _ = Loader(c).rows(ready, {})
    with c.session() as http, ledger.writer("run-1", 0) as journal:
        def checkpoint(row, status, fields):  # what the loader journals for a connector's step
            journal.record(entry(row.id, status, "run-1", file_hash=row.file_hash, **fields))
        c._upload(http, todo[0], checkpoint)  # ... then SIGKILL before the upsert
    uploads_before = kit.stats(kontent)["uploads"]
    priors = ledger.load()
    assert priors[rows[0]["id"]].status == "uploaded"

    with ledger.writer("run-2", 0) as journal:
        result = Loader(c).load(ready, priors.get_many([rows[0]["id"]]), journal, "run-2")
    assert result.counts == {"loaded": 1} and result.bytes_sent == 0
    assert kit.stats(kontent)["uploads"] == uploads_before  # no second upload
    asset = c.find([rows[0]["id"]])[rows[0]["id"]]
    assert asset["file_reference"]["id"] == priors[rows[0]["id"]].file_ref


# ---- issue 16 -----------------------------------------------------------------------------



def test_external_ids_are_escaped_reversibly_and_plain_ids_are_unchanged() -> None:
    assert external_id_for("SKU-0001_a b") == "SKU-0001_a b"
    assert external_id_for("img/a.png") == "img~2Fa~2Epng"
    assert external_id_for("a;b") == "a~3Bb"
    ids = ["a/b", "a~2Fb", "a.b", "a~2Eb", "a~", "a~7E"]
    mapped = [external_id_for(i) for i in ids]
    assert len(set(mapped)) == len(ids)  # collision-free
    assert not any(c in m for m in mapped for c in "/.;")


def test_tags_in_codename_form() -> None:
    assert term_codename("Dark Green!") == "dark_green"
    assert term_codename("2024 Spring") == "n2024_spring"
    assert len(term_codename("x" * 100)) == 60


def test_a_file_of_unknown_size_is_rejected_and_100_mb_means_mib() -> None:
    c = connector("https://manage.kontent.ai")
    assert c.check({}, FileInfo(size=None, fingerprint="x"))[0] == "file"
    assert c.check({}, FileInfo(size=100 * 1024 * 1024, fingerprint="x")) is None
    assert c.check({}, FileInfo(size=100 * 1024 * 1024 + 1, fingerprint="x")) is not None


def test_a_metadata_change_sends_no_file_reference_a_new_file_does(tmp_path: Path) -> None:
    c = connector("https://manage.kontent.ai")
    data = {"id": "A-1", "title": "t", "description": None, "file": "x.png", "file_name": "x.png",
            "content_type": "image/png", "_language": "default", "tags": []}
    loaded = entry("A-1", "loaded", "run-1", vendor_id="asset-1", file_ref="file-1", file_hash="h1")
    same = Row(id="A-1", data=data, index=0, info=FileInfo(size=3, fingerprint="f"), prior=loaded, file_hash="h1")
    plan = c.plan(Unit([same]))
    assert plan.action == "upsert" and [r["method"] for r in plan.requests] == ["PUT"]
    assert "file_reference" not in plan.requests[0]["json"] and "descriptions" not in plan.requests[0]["json"]
    changed = Row(id="A-1", data=data, index=0, info=FileInfo(size=3, fingerprint="g"), prior=loaded, file_hash="h2")
    plan = c.plan(Unit([changed]))
    assert [r["method"] for r in plan.requests] == ["POST", "PUT"] and "file_reference" in plan.requests[1]["json"]


def test_validate_check_vendor_rejects_unknown_references_without_uploading(
        kontent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from assetferry.flows.cli import app

    kit.set_limits(kontent, 200, 12000)
    rows = kit.make_rows(tmp_path / "files", 3)
    rows[1]["folder"] = "brand/2025"
    rows[2]["tags"] = "kettle|purple"
    job = kit.write_job(tmp_path / "job.yaml", kit.job_dict(
        str(kit.write_csv(tmp_path / "m.csv", [{**r, "tags": r["tags"] if i == 2 else "kettle"}
                                               for i, r in enumerate(rows)])),
        kontent, tmp_path / "state", settings={"tags_element": "tags"}))
    result = CliRunner().invoke(app, ["validate", str(job), "--check-vendor", "--output", "json"])
    assert result.exit_code == 1, result.output
    import json

    out = json.loads(result.output)
    assert out["destination_check"].startswith("checked")
    reasons = {r["id"]: (r["field"], r["reason"]) for r in out["rejects"]}
    assert reasons[rows[1]["id"]][0] == "folder" and "'2025' under 'brand'" in reasons[rows[1]["id"]][1]
    assert reasons[rows[2]["id"]][0] == "tags" and "'purple'" in reasons[rows[2]["id"]][1]
    assert len(reasons) == 2
    s = kit.stats(kontent)
    assert s["uploads"] == 0 and s["requests"] == 4  # languages, folders, collections, taxonomies

    monkeypatch.delenv("KONTENT_API_KEY")
    result = CliRunner().invoke(app, ["validate", str(job), "--check-vendor"])
    assert "credentials not available" in " ".join(result.output.split())
    assert "KONTENT_API_KEY" in result.output and kit.KEY not in result.output
