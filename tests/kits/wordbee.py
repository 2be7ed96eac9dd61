"""Contract kit: Wordbee Translator (media upload, then attach to a segment)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from assetferry.sandbox import wordbee as wordbee_sim
from tests.contract_kits import Kit, records

SEGMENTS = wordbee_sim.DEMO_SEGMENT_IDS.split(",")
ACCOUNT, KEY, PROJECT = wordbee_sim.DEMO_ACCOUNT_ID, wordbee_sim.DEMO_API_KEY, int(wordbee_sim.DEMO_PROJECT_ID)
ENV = {"WORDBEE_ACCOUNT": ACCOUNT, "WORDBEE_KEY": KEY}


def destination(root: str, **settings: Any) -> dict[str, Any]:
    """A job destination for the simulator at ``root``; the client's hourly allowance is raised
    out of the way (the limiter is shared by every test of the process)."""
    return {"vendor": "wordbee", "url": f"{root}{wordbee_sim.BASE_PATH}",
            "credentials": {"account_id": "env:WORDBEE_ACCOUNT", "api_key": "env:WORDBEE_KEY"},
            "settings": {"project_id": PROJECT, "requests_per_hour": 1_000_000, **settings}}


def make_rows(folder: Path, n: int, *, start: int = 0, prefix: str = "W") -> list[dict[str, Any]]:
    """n small distinct files named after their ids, spread over the demo segments and locales."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        rid = f"{prefix}-{i:04d}"
        path = folder / f"{rid}.txt"
        path.write_bytes(f"wordbee asset {rid} ".encode() * (5 + i % 40))
        rows.append({"id": rid, "file": str(path), "parent": SEGMENTS[i % len(SEGMENTS)],
                     "language": ("en", "de", "")[i % 3], "title": f"Title {rid}"})
    return rows


def stored(root: str) -> Counter[str]:
    """Record id (the file name's stem) -> how many assets the vendor holds for it."""
    return Counter(r["name"].rsplit(".", 1)[0] for r in records(root))


def _reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()


KIT = Kit(
    name="wordbee",
    app=wordbee_sim.create_app,
    destination=destination,
    env=ENV,
    bad_env={"WORDBEE_ACCOUNT": ACCOUNT, "WORDBEE_KEY": "not-the-wordbee-key"},
    rows=make_rows,
    stored=stored,
    refuse=lambda row: {**row, "parent": "99999999"},  # a segment the project does not have
    store_route="attach",
    reset=_reset,
)
