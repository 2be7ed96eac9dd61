"""Contract kit: Media Pocket. The vendor fetches files by URL: local rows are staged into a folder
that the simulator's own server also serves (``/kit-files``), so Media Pocket downloads them back."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from starlette.staticfiles import StaticFiles

from assetferry.sandbox import mediapocket as mediapocket_sim
from tests import kit as shared_kit
from tests.contract_kits import Kit, records

STAGE = Path(tempfile.mkdtemp(prefix="assetferry-mediapocket-kit-"))


def app() -> Any:
    """The simulator plus a static route over the staging folder (the "public_base_url")."""
    sim = mediapocket_sim.create_app()
    sim.mount("/kit-files", StaticFiles(directory=str(STAGE)))
    return sim


def destination(root: str) -> dict[str, Any]:
    return {"vendor": "mediapocket", "url": f"{root}{mediapocket_sim.BASE_PATH}",
            "credentials": {"api_key": "env:MEDIAPOCKET_API_KEY"},
            "settings": {"project_id": mediapocket_sim.DEMO_PROJECT_ID, "staging": f"file://{STAGE}/",
                         "public_base_url": f"{root}/kit-files", "requests_per_second": 200}}


def _reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()


KIT = Kit(
    name="mediapocket",
    app=app,
    destination=destination,
    env={"MEDIAPOCKET_API_KEY": mediapocket_sim.DEMO_API_KEY},
    bad_env={"MEDIAPOCKET_API_KEY": "not-the-mediapocket-key"},
    rows=lambda folder, n: shared_kit.make_rows(folder, n),
    stored=lambda root: Counter(r["external_id"] for r in records(root)),
    refuse=lambda row: {**row, "parent": "no-such-project"},  # 404 project not found
    store_route="create",
    reset=_reset,
)
