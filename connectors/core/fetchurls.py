"""Files the vendor fetches itself by URL: http(s) passes through, s3:// is presigned, local is staged.

Used by vendors whose API takes a file *URL* instead of the bytes (Ex Libris Esploro, Media Pocket).

SECURITY: a presigned URL carries a signature that grants read access to the object until it
expires. This module never logs one, and callers must treat the returned URL as a secret-ish value:
send it to the vendor, do not log it, do not put it in error messages or the rejects file.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, Field, field_validator, model_validator

from assetferry.connectors.core.errors import ConfigError, RejectedError, TransientError
from assetferry.connectors.core.files import AccessPolicy, FileStore

#: SigV4 presigned URLs are valid for at most 7 days; AWS refuses to honour a longer expiry.
MAX_EXPIRES_SECONDS = 604800

#: Staging uploads to S3 go in parts of this size (multipart upload, S3's minimum part is 5 MiB),
#: at most ``_STAGING_PARTS_IN_FLIGHT`` at a time: a staging copy holds <= 16 MiB in memory,
#: whatever the file size. s3fs reads a file below two parts in one go (so < 16 MiB here).
STAGING_PART_SIZE = 8 * 2**20
_STAGING_PARTS_IN_FLIGHT = 2
_S3_MAX_PARTS = 10_000

LOCAL_NEEDS_STAGING = ("local file needs staging: set destination.settings.staging to an s3:// "
                       "(or other fetchable) location")
NO_FILE = "no file given"

_PASS = frozenset({"http", "https"})
_PRESIGN = frozenset({"s3", "s3a"})
_LOCAL = frozenset({"file", "local"})
# "s3://b/k", "HTTPS://h/p", chained "simplecache::s3://b/k"; no match means a plain local path.
_PROTOCOL = r"^([A-Za-z][A-Za-z0-9+.\-]*(?:::[A-Za-z][A-Za-z0-9+.\-]*)*)://"
_PROTOCOL_RE = re.compile(_PROTOCOL)
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")


def _unsupported(protocol: str) -> str:
    return (f"{protocol}:// files cannot be fetched by the vendor: only http(s):// URLs pass "
            f"through and only s3:// can be presigned; copy the files to S3 or an http server")


def _protocol(url: str) -> str:
    match = _PROTOCOL_RE.match(url)
    return match.group(1).lower() if match else "file"


def _human(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} seconds"


def _with_sigv4(options: dict[str, Any]) -> dict[str, Any]:
    # Without this s3fs/botocore presign SigV2-style (no X-Amz-Expires, deprecated by AWS).
    config = dict(options.get("config_kwargs") or {})
    config["signature_version"] = "s3v4"
    return {**options, "config_kwargs": config}


@dataclass(frozen=True)
class FetchSettings:
    """How files become URLs a vendor can fetch (``destination.settings`` of such a vendor).

    ``staging``: any writable fsspec URL (``s3://bucket/prefix/``) where local files are copied;
    None means local files are rejected. Staged keys are ``<staging>/<fingerprint>/<file name>``:
    a changed file gets a new key and old copies stay, so give the staging prefix a lifecycle rule
    (e.g. expire after ``expires_seconds``). ``expires_seconds``: presigned URL lifetime, at most
    7 days (SigV4). ``public_base_url``: the http(s) address that serves the staging root; staged
    files then get ``<public_base_url>/<fingerprint>/<name>`` instead of a presigned URL. It is
    required when staging is not S3 (nothing else can presign there) and optional for S3 (a
    public bucket or CDN). ``storage_options``: fsspec options for the staging location; None
    means the job's file options. Raises ConfigError (at construction) for unusable settings.
    """

    staging: str | None = None
    expires_seconds: int = MAX_EXPIRES_SECONDS
    public_base_url: str | None = None
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        expires = self.expires_seconds
        whole = isinstance(expires, int) and not isinstance(expires, bool)
        if not whole or not 0 < expires <= MAX_EXPIRES_SECONDS:
            raise ConfigError(f"destination.settings.expires_seconds must be a whole number of seconds "
                              f"from 1 to {MAX_EXPIRES_SECONDS} (7 days, the SigV4 maximum); got {expires!r}")
        if self.public_base_url is not None and _protocol(self.public_base_url) not in _PASS:
            raise ConfigError("destination.settings.public_base_url must be an http(s):// URL")
        if not self.staging:
            return
        protocol = _protocol(self.staging)
        if protocol in _PASS:
            raise ConfigError(f"destination.settings.staging ({self.staging}) must be a writable "
                              f"location (s3://bucket/prefix/), not an http(s) URL")
        if protocol not in _PRESIGN and self.public_base_url is None:
            raise ConfigError(f"destination.settings.staging ({self.staging}) cannot be presigned: set "
                              f"destination.settings.public_base_url to the http(s) URL that serves it, "
                              f"or stage to s3://")


class FetchableURLs:
    """Turns each asset ``file`` into a URL the vendor can download.

    - ``http(s)://`` passes through unchanged (no request);
    - ``s3://`` gets a presigned GET URL (SigV4, ``expires_seconds``) after a HEAD proving it exists;
    - a local path or ``file://`` is copied to ``settings.staging`` (streamed, once per content
      version) and that copy is presigned, or mapped through ``public_base_url``;
    - anything else (``gs://``, ``ftp://``, chained URLs) is rejected.

    ``file_options`` are the job's (already resolved) fsspec options for the source files.
    Thread-safe: ``url_for`` may run from several threads at once. Returned URLs must not be
    logged (see module docstring).
    """

    def __init__(self, settings: FetchSettings, file_options: dict[str, Any] | None = None,
                 policy: AccessPolicy | None = None) -> None:
        self.settings = settings
        self._file_options = dict(file_options or {})
        # Same options for stat (HEAD) and presign: the signer must hold the reader's credentials.
        self._sources = FileStore(_with_sigv4(self._file_options), policy=policy)
        self._staging_root = settings.staging.rstrip("/") if settings.staging else None
        self._staging_protocol = _protocol(settings.staging) if settings.staging else None
        self._staging_fs: Any = None
        self._lock = threading.Lock()

    @property
    def policy(self) -> AccessPolicy | None:
        """Where files may come from (the job's allowed roots and hosts): a file outside is
        rejected before any URL is made for it (never presigned, staged or passed through)."""
        return self._sources.policy

    @policy.setter
    def policy(self, value: AccessPolicy | None) -> None:
        self._sources.policy = value

    # --- no I/O -----------------------------------------------------------------------------

    def check(self, files: pd.Series) -> pd.Series:
        """Per row, the reason this file can never get a URL (no file, local file without staging,
        unsupported protocol), else NA. Vectorised, no I/O; same index as ``files``. Rows that
        pass may still be rejected by ``url_for`` (missing or unreadable file)."""
        text = files.astype("string")
        blank = (text.isna() | (text.str.strip() == "")).to_numpy(dtype=bool, na_value=True)
        protocol = text.str.extract(_PROTOCOL, expand=False).str.lower().fillna("file")
        local = protocol.isin(_LOCAL).to_numpy(dtype=bool)
        known = protocol.isin(_PASS | _PRESIGN | _LOCAL).to_numpy(dtype=bool)
        out = pd.Series(pd.NA, index=files.index, dtype="string")
        unsupported = ~blank & ~known
        if unsupported.any():
            out[unsupported] = [_unsupported(p) for p in protocol[unsupported]]
        if self._staging_root is None:
            out[~blank & local] = LOCAL_NEEDS_STAGING
        out[blank] = NO_FILE
        return out

    def describe(self, file: str, fingerprint: str | None = None) -> str:
        """What ``url_for`` would do with this file, for dry runs; no I/O. The staged key shows
        ``<fingerprint>`` when none is given (computing it needs a stat)."""
        reason = self._reason(file)
        if reason is not None:
            return f"rejected: {reason}"
        protocol = _protocol(file)
        if protocol in _PASS:
            return "passed through"
        lifetime = _human(self.settings.expires_seconds)
        if protocol in _PRESIGN:
            return f"presigned {file} ({lifetime})"
        segment = _segment(fingerprint) if fingerprint else "<fingerprint>"
        target = f"{self._staging_root}/{segment}/{_name(file)}"
        if self.settings.public_base_url is not None:
            return f"staged to {target}, served as {self._public_url(segment, _name(file))}"
        return f"staged to {target} then presigned ({lifetime})"

    # --- I/O --------------------------------------------------------------------------------

    def url_for(self, file: str, fingerprint: str | None = None) -> str:
        """A URL the vendor can GET for ``file``. The result is a credential: never log it.

        Local files are copied to staging first, under ``<fingerprint>/<name>``; ``fingerprint``
        is the caller's ``FileStore.stat`` fingerprint of the file (computed here when None). The
        copy is skipped when an object of the same size already sits at that key, so re-runs
        and retries copy an unchanged file once; a changed file gets a new key.

        Raises RejectedError(field="file") when the row can never get a URL (see ``check``) or
        the file is missing, unreadable or a directory; ConfigError when the staging location
        refuses us (missing bucket, access denied); TransientError for other staging failures.
        """
        reason = self._reason(file)
        if reason is not None:
            raise RejectedError(reason, field="file")
        refused = self._sources.refused(file)
        if refused is not None:
            raise RejectedError(f"not allowed: {refused}", field="file")
        protocol = _protocol(file)
        if protocol in _PASS:
            return file
        info = self._sources.stat(file)  # HEAD for s3: never hand out a URL to a missing object
        if info.error is not None:
            raise RejectedError(info.error, field="file")
        if protocol in _PRESIGN:
            fs = fsspec.filesystem(protocol, **self._sources.options)
            return str(fs.url(file, expires=self.settings.expires_seconds))
        return self._stage(file, info.size or 0, fingerprint or info.fingerprint)

    def _stage(self, file: str, size: int, fingerprint: str) -> str:
        fs = self._staging()
        segment, name = _segment(fingerprint), _name(file)
        target = f"{self._staging_root}/{segment}/{name}"
        local_path = LocalFileSystem._strip_protocol(file)
        try:
            fs.invalidate_cache(target)  # another process may have staged (or removed) it since
            try:
                staged = fs.info(target).get("size")
            except FileNotFoundError:
                staged = None
            if staged != size:  # absent, or a partial copy from an interrupted non-S3 copy
                kwargs: dict[str, Any] = {}
                if self._staging_protocol in _PRESIGN:
                    # Multipart in bounded parts (s3fs's default part is 50 MiB, x10 in flight).
                    kwargs = {"chunksize": max(STAGING_PART_SIZE, math.ceil(size / _S3_MAX_PARTS)),
                              "max_concurrency": _STAGING_PARTS_IN_FLIGHT}
                else:
                    fs.makedirs(f"{self._staging_root}/{segment}", exist_ok=True)
                fs.put_file(local_path, target, **kwargs)  # read from disk part by part (see above)
            if self.settings.public_base_url is not None:
                return self._public_url(segment, name)
            return str(fs.url(target, expires=self.settings.expires_seconds))
        except (FileNotFoundError, PermissionError) as exc:
            if not os.path.isfile(local_path):  # the source vanished between stat and copy
                raise RejectedError("file not found", field="file") from exc
            raise ConfigError(f"cannot write to staging {self._staging_root} "
                              f"({type(exc).__name__}); check the location and its storage_options") from exc
        except Exception as exc:  # noqa: BLE001 - any other backend failure: a later attempt may pass
            raise TransientError(f"copy to staging {self._staging_root} failed "
                                 f"({type(exc).__name__})") from exc

    def _staging(self) -> Any:
        with self._lock:
            if self._staging_fs is None:
                protocol = self._staging_protocol or "file"
                if self.settings.storage_options is not None:
                    options = dict(self.settings.storage_options)
                else:  # the job's file options are for remote stores; local staging needs none
                    options = {} if protocol in _LOCAL else dict(self._file_options)
                if protocol in _PRESIGN:
                    options = _with_sigv4(options)
                try:
                    self._staging_fs = fsspec.filesystem(protocol, **options)
                except (ImportError, ValueError, TypeError) as exc:
                    raise ConfigError(f"destination.settings.staging ({self._staging_root}): "
                                      f"{type(exc).__name__}: {exc}") from exc
            return self._staging_fs

    def _public_url(self, segment: str, name: str) -> str:
        return f"{(self.settings.public_base_url or '').rstrip('/')}/{quote(f'{segment}/{name}')}"

    def _reason(self, file: str) -> str | None:
        # Row-wise twin of ``check``; keep the two in step.
        if not isinstance(file, str) or not file.strip():  # None, NA, NaN, blank
            return NO_FILE
        protocol = _protocol(file)
        if protocol in _PASS or protocol in _PRESIGN:
            return None
        if protocol in _LOCAL:
            return LOCAL_NEEDS_STAGING if self._staging_root is None else None
        return _unsupported(protocol)


def _segment(fingerprint: str) -> str:
    """A key segment from a fingerprint: itself when key-safe (hex digests are), else its md5."""
    if _SAFE_SEGMENT.match(fingerprint):
        return fingerprint
    return hashlib.md5(fingerprint.encode()).hexdigest()


def _name(file: str) -> str:
    return posixpath.basename(LocalFileSystem._strip_protocol(file))


class FetchableSettings(BaseModel):
    """Settings fields for a vendor that fetches files by URL (mix into its settings model):
    ``staging`` (where local files are copied), ``public_base_url`` (an http(s) URL serving a
    non-S3 staging root), ``expires_seconds`` (presigned URL lifetime, SigV4 maximum 7 days) and
    ``staging_options`` (fsspec options for staging; secrets only as env:/secret: references).
    Unusable combinations are refused when the job is validated."""

    staging: str | None = Field(default=None, description="fsspec URL local files are copied to for the vendor to fetch")
    public_base_url: str | None = Field(default=None, description="http(s) URL serving the staging root")
    expires_seconds: int = Field(default=MAX_EXPIRES_SECONDS, ge=1, le=MAX_EXPIRES_SECONDS)
    staging_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for staging (default: source.options); secrets as env:/secret:")

    @field_validator("staging_options")
    @classmethod
    def _references_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from assetferry.connectors.core.credentials import literal_secrets

        bad = literal_secrets(value or {})
        if bad:
            raise ValueError(f"{', '.join(bad)} must be a reference like env:NAME or secret:BLOCK_NAME, "
                             "not a literal value")
        return value

    @model_validator(mode="after")
    def _fetchable(self) -> FetchableSettings:
        try:
            self.fetch_settings()
        except ConfigError as exc:
            raise ValueError(str(exc).replace("destination.settings.", "")) from None
        return self

    def fetch_settings(self, storage_options: dict[str, Any] | None = None) -> FetchSettings:
        return FetchSettings(staging=self.staging, expires_seconds=self.expires_seconds,
                             public_base_url=self.public_base_url, storage_options=storage_options)
