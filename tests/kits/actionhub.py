"""Contract kit: ActionHub (metadata only; one program per request)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from assetferry.sandbox import actionhub as actionhub_sim
from tests.contract_kits import Kit, records

REFUSED_ID = "AH-REFUSED"  # the simulator refuses this asset_id with an indexed 422 (see _reset)


def _rows(folder: Path, n: int) -> list[dict[str, Any]]:
    return [{"id": f"AH-{i:04d}", "title": f"Asset {i}", "tags": f"kit|n{i}"} for i in range(n)]


def _reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()
    httpx.post(f"{root}/_sandbox/refuse", json={"asset_ids": [REFUSED_ID]}).raise_for_status()


KIT = Kit(
    name="actionhub",
    app=actionhub_sim.create_app,
    destination=lambda root: {"vendor": "actionhub", "url": root,
                              "credentials": {"api_key": "env:ACTIONHUB_API_KEY"},
                              "settings": {"program_id": actionhub_sim.DEMO_PROGRAM_ID,
                                           "assets_per_request": 3}},
    env={"ACTIONHUB_API_KEY": actionhub_sim.DEMO_API_KEY},
    bad_env={"ACTIONHUB_API_KEY": "not-the-actionhub-key"},
    rows=_rows,
    stored=lambda root: Counter(r["asset_id"] for r in records(root)),
    refuse=lambda row: {**row, "id": REFUSED_ID},
    store_route="upsert",
    reset=_reset,
)
