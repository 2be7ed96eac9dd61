"""Contract kit: the toy vendor of tests/toyvendor.py (batches, non-idempotent create)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests import toyvendor
from tests.contract_kits import Kit, records


def _rows(folder: Path, n: int) -> list[dict[str, Any]]:
    return [{"id": f"T-{i:04d}", "title": f"Toy {i}"} for i in range(n)]


def _reset(root: str) -> None:
    httpx.post(f"{root}/_sandbox/reset").raise_for_status()


KIT = Kit(
    name="toy",
    app=toyvendor.create_app,
    destination=lambda root: {"vendor": "toy", "url": root, "credentials": {"api_key": "env:TOY_KEY"},
                              "settings": {"batch": 4}},
    env={"TOY_KEY": toyvendor.TOY_KEY},
    bad_env={"TOY_KEY": "nope"},
    rows=_rows,
    stored=lambda root: Counter(r["key"] for r in records(root)),
    refuse=lambda row: {**row, "title": "bad name"},
    store_route="create",
    reset=_reset,
    batch_size=8,
)
