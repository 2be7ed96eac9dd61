"""Reading asset files from anywhere fsspec reaches: resolve, stat (fingerprint) and stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pandas as pd


def display_url(url: str) -> str:
    """A file URL fit for messages and rejects: no user:password@, no query string or fragment
    (a presigned URL's signature lives there)."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def resolve_paths(files: pd.Series, sources: pd.Series) -> pd.Series:
    """Relative file paths are taken relative to the folder of the manifest that names them
    (``images/a.png`` in ``s3://b/m/list.csv`` is ``s3://b/m/images/a.png``). Vectorised."""
    files = files.astype("string")
    relative = ~files.str.contains("://", regex=False, na=True) & ~files.str.startswith("/", na=True)
    if not relative.any():
        return files
    folders = sources.astype("string").str.rsplit("/", n=1).str[0]
    out = files.copy()
    out[relative] = folders[relative] + "/" + files[relative]
    return out


@dataclass(frozen=True)
class FileInfo:
    size: int | None
    fingerprint: str  # changes when the content changes (see ``stat``)
    error: str | None = None


def _fingerprint(url: str, info: dict[str, Any]) -> str:
    # S3 & co: the ETag is a content hash. Local: size + mtime (what rsync trusts by default).
    # HTTP: ETag or Last-Modified when the server sends them, else size only.
    parts = [str(info.get("size"))]
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "Last-Modified"):
        if info.get(key) is not None:
            parts.append(f"{key}={info[key]}")
    return hashlib.md5("|".join([url, *parts]).encode()).hexdigest()


class FileStore:
    """Opens asset files with the job's storage options; one filesystem instance per protocol."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = options or {}
        self._fs: dict[str, Any] = {}

    def _split(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._fs.get(protocol)
        if fs is None:
            # The job's storage options are for its object store (the manifest's, e.g. s3 keys and
            # endpoint); a local or http(s) file in the same manifest takes none of them.
            opts = {} if protocol in ("file", "local", "http", "https") else self.options
            fs = self._fs[protocol] = fsspec.filesystem(protocol, **opts)
            fs.invalidate_cache()  # shared instance: never trust another run's cached listings
        path = url if protocol in ("http", "https") else fs._strip_protocol(url)
        return fs, path

    def stat(self, url: str) -> FileInfo:
        """Size and fingerprint without reading the content; ``error`` set when unreadable."""
        try:
            fs, path = self._split(url)
            info = fs.info(path)
        except FileNotFoundError:
            return FileInfo(None, "", "file not found")
        except PermissionError:
            return FileInfo(None, "", "permission denied")
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes a row reason
            return FileInfo(None, "", f"cannot read file ({type(exc).__name__})")
        if info.get("type") == "directory":
            return FileInfo(None, "", "is a directory, not a file")
        return FileInfo(info.get("size"), _fingerprint(url, info))

    def stat_many(self, urls: list[str], workers: int = 8) -> list[FileInfo]:
        if all("://" not in u for u in urls) or len(urls) < 4:
            return [self.stat(u) for u in urls]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.stat, urls))

    def opener(self, url: str) -> Callable[[], IO[bytes]]:
        """A factory of fresh binary streams (so a retry re-reads from the start)."""
        fs, path = self._split(url)
        return lambda: fs.open(path, "rb")
