"""Helpers for end-to-end tests: make files and manifests, write jobs, read the simulator back."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from assetferry.sandbox import kontent

ENV = kontent.DEMO_ENVIRONMENT_ID
KEY = kontent.DEMO_API_KEY


def make_rows(folder: Path, n: int, *, start: int = 0, prefix: str = "A") -> list[dict[str, str]]:
    """n small distinct files on disk and their manifest rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        path = folder / f"{prefix.lower()}-{i:04d}.txt"
        path.write_bytes(f"asset {prefix}{i} ".encode() * (10 + i % 50))
        rows.append({"id": f"{prefix}-{i:04d}", "title": f"Title {prefix}{i}", "description": f"Alt text {i}",
                     "file": str(path), "language": "default", "tags": "x|y"})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def job_dict(manifest: str, root: str, state: Path, **overrides: Any) -> dict[str, Any]:
    settings = {"environment_id": ENV, **overrides.pop("settings", {})}
    job = {
        "name": overrides.pop("name", "e2e"),
        "source": {"url": manifest, **overrides.pop("source", {})},
        "destination": {"vendor": "kontent", "url": f"{root}/v2",
                        "credentials": {"api_key": "env:KONTENT_API_KEY"}, "settings": settings},
        "state": str(state),
        "retry_delay_seconds": 0,
        **overrides,
    }
    return job


def write_job(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def stats(root: str) -> dict[str, Any]:
    return httpx.get(f"{root}/_sandbox/stats").json()


def set_limits(root: str, per_second: int, per_minute: int) -> None:
    httpx.post(f"{root}/_sandbox/limits", json={"per_second": per_second, "per_minute": per_minute}).raise_for_status()


def list_assets(root: str) -> list[dict[str, Any]]:
    """Every asset in the simulator, through the vendor's own paginated listing."""
    out: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    token = None
    with httpx.Client(timeout=30) as client:
        while True:
            h = dict(headers, **({"x-continuation": token} if token else {}))
            r = client.get(f"{root}/v2/projects/{ENV}/assets", headers=h)
            if r.status_code == 429:
                import time

                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            r.raise_for_status()
            body = r.json()
            out += body["assets"]
            token = body["pagination"]["continuation_token"]
            if not token:
                return out


def md5_file(path: str | os.PathLike[str]) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def md5_url(url: str) -> str:
    return hashlib.md5(httpx.get(url, timeout=30).content).hexdigest()
