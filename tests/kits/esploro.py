"""Contract kit: Ex Libris Esploro (file links on a research asset, then the Load files job).

Local files are staged to a folder that the kit's server also serves (``/_kitfiles``), so the
simulator's Load files job really downloads them. Every row goes to one asset: one group, so the
dry run plans the rows in source order."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from assetferry.sandbox import esploro as esploro_sim
from tests.contract_kits import Kit, records

STAGE = Path(tempfile.mkdtemp(prefix="assetferry-esploro-kit-"))
ASSET = esploro_sim.DEMO_ASSET_IDS.split(",")[0]
UNKNOWN_ASSET = "991999999990561"


def app() -> Starlette:
    """The simulator, plus the staging folder served at ``/_kitfiles`` (what Esploro fetches)."""
    return Starlette(routes=[Mount("/_kitfiles", StaticFiles(directory=STAGE)),
                             Mount("/", esploro_sim.create_app(per_second=10_000))])


def destination(root: str) -> dict[str, Any]:
    return {"vendor": "esploro", "url": root, "credentials": {"api_key": "env:ESPLORO_API_KEY"},
            "settings": {"staging": f"file://{STAGE}", "public_base_url": f"{root}/_kitfiles",
                         "requests_per_second": 500, "job_poll_seconds": 0.05, "job_timeout_seconds": 30}}


def rows(folder: Path, n: int) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"E-{i:04d}.txt"
        path.write_bytes(f"esploro file {i} ".encode() * (5 + i))
        out.append({"id": f"E-{i:04d}", "title": f"File {i}", "description": f"Description {i}",
                    "file": str(path), "parent": ASSET})
    return out


def stored(root: str) -> Counter[str]:
    """Row id (the staged file's name) -> how many links Esploro holds for it (queued or loaded)."""
    return Counter(PurePosixPath(unquote(urlsplit(link["url"]).path)).stem
                   for asset in records(root) for link in asset["links"] if link["status"] != "discarded")


def reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()


KIT = Kit(
    name="esploro",
    app=app,
    destination=destination,
    env={"ESPLORO_API_KEY": esploro_sim.DEMO_API_KEY},
    bad_env={"ESPLORO_API_KEY": "not-the-esploro-key"},
    rows=rows,
    stored=stored,
    refuse=lambda row: {**row, "parent": UNKNOWN_ASSET},
    store_route="patch_asset",
    reset=reset,
)
