"""Per-vendor kits for the contract suite: how to run a vendor's simulator, build a job for it,
make rows, count what the vendor stored, make it refuse a row, and inject faults. Each vendor's kit
is ``KIT`` in ``tests/kits/<vendor>.py``; every vendor of the registry must have one (the suite
fails otherwise), so a new vendor is covered by the shared tests as soon as it is registered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import importlib

import httpx



@dataclass(frozen=True)
class Kit:
    """``destination(root)``: the job's destination (credentials as env: references);
    ``env``: the credential variables (good values); ``rows(folder, n)``: manifest rows;
    ``stored(root)``: record id -> how many times the vendor holds it; ``refuse(row)``: the row
    changed so that the *vendor* (not our validation) refuses it; ``store_route``: the route that
    stores a record (faults are injected there); ``bad_env``: credentials the vendor refuses."""

    name: str
    app: Callable[[], Any]
    destination: Callable[[str], dict[str, Any]]
    env: dict[str, str]
    bad_env: dict[str, str]
    rows: Callable[[Path, int], list[dict[str, Any]]]
    stored: Callable[[str], Counter[str]]
    refuse: Callable[[dict[str, Any]], dict[str, Any]]
    store_route: str
    reset: Callable[[str], None]
    batch_size: int = 5
    read_routes: tuple[str, ...] = ()  # what a dry run may read (e.g. Kontent's environment listings)


def _records(root: str) -> list[dict[str, Any]]:
    return httpx.get(f"{root}/_sandbox/records", timeout=30).json()["records"]


def fault(root: str, *, status: int, count: int = 1, when: str = "before", route: str | None = None,
          retry_after: int | None = None) -> None:
    httpx.post(f"{root}/_sandbox/faults", json={"status": status, "count": count, "when": when, "route": route,
                                                "retry_after": retry_after}).raise_for_status()


def requests_seen(root: str, but: tuple[str, ...] = ()) -> int:
    """Requests the simulator received, not counting those to the routes in ``but``."""
    stats = httpx.get(f"{root}/_sandbox/stats").json()
    return int(stats["requests"]) - sum(int(stats["by_route"].get(r, 0)) for r in but)


def records(root: str) -> list[dict[str, Any]]:
    return _records(root)


def load_kits(names: list[str]) -> dict[str, Kit]:
    """``KIT`` of ``tests/kits/<name>.py`` for each name that has one."""
    kits = {}
    for name in names:
        try:
            module = importlib.import_module(f"tests.kits.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tests.kits.{name}":
                raise
            continue
        kits[name] = module.KIT
    return kits
