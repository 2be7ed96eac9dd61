"""Contract kit: Kontent.ai."""

from __future__ import annotations

from collections import Counter

import httpx

from assetferry.sandbox import kontent as kontent_sim
from tests import kit as kontent_kit
from tests.contract_kits import Kit, records


def _reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()
    kontent_kit.set_limits(root, 1000, 100_000)


KIT = Kit(
    name="kontent",
    app=kontent_sim.create_app,
    destination=lambda root: {"vendor": "kontent", "url": f"{root}/v2",
                              "credentials": {"api_key": "env:KONTENT_API_KEY"},
                              "settings": {"environment_id": kontent_kit.ENV, "requests_per_second": 200,
                                           "requests_per_minute": 10_000}},
    env={"KONTENT_API_KEY": kontent_kit.KEY},
    bad_env={"KONTENT_API_KEY": "not-the-key"},
    rows=lambda folder, n: kontent_kit.make_rows(folder, n),
    stored=lambda root: Counter(r["external_id"] for r in records(root)),
    # Kontent refuses an upload whose Content-Type does not match the file's extension (a folder
    # that does not exist is now rejected by our own check, before anything is sent).
    refuse=lambda row: {**row, "content_type": "image/png"},
    store_route="upsert",
    reset=_reset,
    read_routes=("languages", "folders", "collections", "taxonomies"),
)
