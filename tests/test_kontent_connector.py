"""The Kontent connector's read side against the simulator: listing and lookups."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from connectors.core.errors import TransientError
from connectors.vendors.kontent import KontentConnector, parse_error
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

    from connectors.core.ledger import Ledger, entry
    from connectors.core.loader import Loader
    from connectors.core.records import DuplicateTracker, canonicalize
    from connectors.sources.base import RecordChunk

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
