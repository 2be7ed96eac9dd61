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
    found = connector(kontent).lookup(["ext-0", "ext-1", "never-loaded"])
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
