"""Reading asset files from anywhere fsspec reaches: resolve, stat (fingerprint) and stream."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import posixpath
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

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
    sources = sources.astype("string")
    folder_of = {src: str(src).rsplit("/", 1)[0] for src in sources[relative].unique()}  # one per manifest
    folders = sources.map(folder_of).astype("string")
    out = files.copy()
    out[relative] = folders[relative] + "/" + files[relative]
    return out


#: Folders a state (ledger) folder may never be in, nor be: the system's own.
SYSTEM_PATHS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
                "/sys", "/run", "/var/run", "/var/lock", "/snap")
_HTTP = ("http", "https")
_ALIASES = {"s3a": "s3", "local": "file", "gcs": "gs"}


def is_system_path(path: str) -> bool:
    """True for ``/``, a system folder (``SYSTEM_PATHS``) or anything under one, after resolving
    symlinks; a remote URL is never one."""
    if "://" in path and not path.startswith("file://"):
        return False
    real = os.path.realpath(path.removeprefix("file://"))
    return real == "/" or any(real == s or real.startswith(s + "/") for s in SYSTEM_PATHS)


def _split_url(url: str) -> tuple[str, str]:
    """(protocol, rest) with ``file``/``local`` and ``s3a`` folded: ``("s3", "bucket/key")``."""
    if "://" not in url:
        return "file", url
    protocol, rest = url.split("://", 1)
    protocol = protocol.lower()
    return _ALIASES.get(protocol, protocol), rest


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def static_folder(url: str) -> str:
    """The folder of a manifest URL or path, before any glob character (``s3://b/m/*.csv`` ->
    ``s3://b/m``; ``/data/m/list.csv`` -> ``/data/m``)."""
    cut = len(url)
    for ch in "*?[{":
        at = url.find(ch)
        if at != -1:
            cut = min(cut, at)
    head = url[:cut]
    if "/" not in head.split("://", 1)[-1]:  # "list.csv", "*.csv": the current folder
        return head.split("://", 1)[0] + "://" if "://" in head else "."
    return head.rsplit("/", 1)[0] or "/"


@dataclass(frozen=True)
class AccessPolicy:
    """Where asset files may be read from: a manifest is data from outside and must not make a
    run read (and upload) any file or URL the worker can reach.

    ``roots``: local folders (symlinks resolved) and object-store prefixes (``s3://bucket/prefix``);
    a file is allowed when it lies under one, after resolving symlinks for local files. ``hosts``:
    http(s) files are allowed only from these: a host (``cdn.example.com``), ``host:port``, a
    wildcard (``*.example.com``), an IP or a CIDR (``10.1.0.0/16``), or a URL prefix
    (``https://cdn.example.com/assets/``). None by default: no http(s) file at all. A host name
    that resolves to a loopback, link-local, private or reserved address is refused unless that
    address (or a network holding it), or the exact name, is listed (``check_address``, at stat
    time). A remote path with a ``..`` segment is refused. Reasons are user-facing and name the
    setting to change; nothing is read to decide.
    """

    roots: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    @classmethod
    def build(cls, manifest_url: str, roots: list[str] | None = None,
              hosts: list[str] | None = None) -> AccessPolicy:
        """The job's policy: ``roots`` (None: the manifest's own folder) made absolute and real.
        Raises ConfigError when that default would be ``/`` (a manifest at the top of the disk
        would allow every file): the job must then list ``source.allowed_roots``."""
        wanted = list(roots) if roots is not None else [static_folder(manifest_url)]
        if roots is None and _split_url(wanted[0])[0] == "file" \
                and os.path.realpath(_split_url(wanted[0])[1] or "/") == "/":
            from assetferry.connectors.core.errors import ConfigError

            raise ConfigError(f"source.url: the manifest {manifest_url} is in /, so its folder cannot be the "
                              "default allowed root (it would allow every file on the machine): list the "
                              "folders asset files may be read from in source.allowed_roots")
        out = []
        for root in wanted:
            protocol, rest = _split_url(root)
            if protocol == "file":
                out.append("file://" + os.path.realpath(rest or "/"))
            else:
                out.append(f"{protocol}://{posixpath.normpath(rest).lstrip('/') if rest else ''}".rstrip("/"))
        return cls(tuple(out), tuple(h.strip() for h in hosts or () if h.strip()))

    def check(self, files: pd.Series) -> pd.Series:
        """Per file, the reason it may not be read, else NA (same index as ``files``). Vectorised
        over protocols and prefixes; local files are resolved once per distinct path."""
        text = files.astype("string")
        out = pd.Series(pd.NA, index=files.index, dtype="string")
        present = text.notna()
        if not present.any():
            return out
        unique = text[present].unique()
        reasons = {value: self.reason(str(value)) for value in unique}
        out[present] = text[present].map(reasons).astype("string")
        return out

    def reason(self, url: str) -> str | None:
        """Why ``url`` may not be read (None: allowed)."""
        protocol, rest = _split_url(url)
        if protocol in _HTTP:
            return self._http_reason(url)
        if protocol == "file":
            real = "file://" + os.path.realpath(rest)
            if any(_under(real, r) for r in self.roots if r.startswith("file://")):
                return None
            linked = os.path.realpath(rest) != os.path.abspath(rest)
            return ("outside the allowed roots (source.allowed_roots; default: the manifest's folder)"
                    + (" once links are resolved" if linked else ""))
        if "::" in url.split("://", 1)[0]:
            return "chained fsspec URLs are not allowed as files"
        if any(part == ".." for part in rest.split("/")):
            return "path contains '..'"
        full = f"{protocol}://{rest.lstrip('/')}"  # memory:///m/a and memory://m/a are one file
        if any(_under(full, r) for r in self.roots if not r.startswith("file://")):
            return None
        return "outside the allowed roots (source.allowed_roots; default: the manifest's folder or prefix)"

    def _http_reason(self, url: str) -> str | None:
        if not self.hosts:
            return "http(s) files are not allowed: list their hosts in source.allowed_hosts"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return "not a valid URL"
        if not host:
            return "URL without a host"
        if parts.username or parts.password:
            return "URLs with user:password@ are not allowed as files"
        if any(self._host_matches(entry, url, host, port) for entry in self.hosts):
            return None
        return f"host {host} is not in source.allowed_hosts"

    @staticmethod
    def _host_matches(entry: str, url: str, host: str, port: int) -> bool:
        if "://" in entry:  # a URL prefix
            base = entry if entry.endswith("/") else entry + "/"
            return url.lower().startswith(base.lower()) or url.lower() == entry.lower()
        name, _, want_port = entry.lower().partition(":") if entry.count(":") == 1 else (entry.lower(), "", "")
        if want_port and str(port) != want_port:
            return False
        if "/" in name:  # a CIDR
            try:
                return ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False)
            except ValueError:
                return False
        if name.startswith("*."):
            return host.endswith(name[1:])
        return host == name.strip("[]")

    def check_address(self, url: str, resolve: Callable[[str], list[str]] | None = None) -> str | None:
        """For an allowed http(s) URL: why it may not be fetched after resolving its host (a name
        that points at a loopback, link-local, private or reserved address not listed by that
        address, a network or the exact name), else None. Does DNS, never contacts the host."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        listed = {h.lower().partition(":")[0] if h.count(":") == 1 else h.lower().strip("[]")
                  for h in self.hosts if "://" not in h}
        prefixes = [urlsplit(h).hostname for h in self.hosts if "://" in h]
        if host in listed or host in prefixes:
            return None  # named exactly: the job's own choice
        try:
            addresses = (resolve or _resolve)(host)
        except OSError:
            return f"host {host} does not resolve"
        nets = []
        for h in self.hosts:
            try:
                nets.append(ipaddress.ip_network(h.strip("[]"), strict=False))
            except ValueError:
                continue
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: drop the zone
            internal = (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved
                        or ip.is_multicast or ip.is_unspecified)
            if internal and not any(ip in n for n in nets):
                return (f"host {host} resolves to an internal address ({ip}); list it in "
                        "source.allowed_hosts to allow it")
        return None


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def unreachable(exc: BaseException | None) -> str | None:
    """"connection refused", "host not found", "timed out", ... when ``exc`` (or its cause) is a
    failure to reach a host rather than a missing file, else None."""
    found = None
    for _ in range(6):
        if exc is None:
            break
        exc = getattr(exc, "os_error", None) or exc  # aiohttp's ClientConnectorError holds the OSError
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, socket.gaierror):
            return "host not found"
        if isinstance(exc, TimeoutError):
            return "timed out"
        if type(exc).__name__ in ("ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
                                  "ClientOSError", "ServerTimeoutError", "ConnectionTimeoutError"):
            found = found or "connection failed"
        exc = exc.__cause__ or exc.__context__
    return found


class AccessDenied(PermissionError):
    """A file outside the job's allowed roots or hosts (see ``AccessPolicy``)."""


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

    def __init__(self, options: dict[str, Any] | None = None, policy: AccessPolicy | None = None) -> None:
        self.options = options or {}
        self._fs: dict[str, Any] = {}
        #: Where files may be read from (None: anywhere; ``make_connector`` sets the job's). Checked
        #: again at stat and at open, with symlinks resolved at that moment.
        self.policy = policy
        self._addresses: dict[str, str | None] = {}

    def refused(self, url: str) -> str | None:
        """Why the policy forbids reading ``url`` (None: allowed, or no policy). May do DNS."""
        if self.policy is None:
            return None
        reason = self.policy.reason(url)
        if reason is None and _split_url(url)[0] in _HTTP:
            host = (urlsplit(url).hostname or "").lower()
            if host not in self._addresses:  # one DNS lookup per host and batch, not per file
                self._addresses[host] = self.policy.check_address(url)
            reason = self._addresses[host]
        return reason

    def _split(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._fs.get(protocol)
        if fs is None:
            # The job's storage options are for its object store (the manifest's, e.g. s3 keys and
            # endpoint); a local or http(s) file in the same manifest takes none of them.
            opts = {} if protocol in ("file", "local", "http", "https") else self.options
            if protocol.lower() in _HTTP and self.policy is not None:
                # A redirect is a new URL: it must pass the same policy (an allowed host may
                # redirect to an internal one). Own instance: the guard belongs to this store.
                opts = {"client_kwargs": {"trace_configs": [self._redirect_guard()]}, "skip_instance_cache": True}
            fs = self._fs[protocol] = fsspec.filesystem(protocol, **opts)
            fs.invalidate_cache()  # shared instance: never trust another run's cached listings
        path = url if protocol in ("http", "https") else fs._strip_protocol(url)
        return fs, path

    def _redirect_guard(self) -> Any:
        import aiohttp
        from yarl import URL

        async def on_redirect(session: Any, context: Any, params: Any) -> None:
            location = params.response.headers.get("Location", "")
            target = str(params.response.url.join(URL(location)))
            refused = self.refused(target)
            if refused:
                raise AccessDenied(f"not allowed: redirected to {display_url(target)}: {refused}")

        guard = aiohttp.TraceConfig()
        guard.on_request_redirect.append(on_redirect)
        return guard

    def stat(self, url: str) -> FileInfo:
        """Size and fingerprint without reading the content; ``error`` set when unreadable."""
        refused = self.refused(url)
        if refused:
            return FileInfo(None, "", f"not allowed: {refused}")
        try:
            fs, path = self._split(url)
            info = fs.info(path)
        except FileNotFoundError as exc:
            if isinstance(exc.__cause__, AccessDenied):  # fsspec's http info wraps it
                return FileInfo(None, "", str(exc.__cause__))
            if unreachable(exc.__cause__):  # fsspec's http info wraps a refused connection too
                return FileInfo(None, "", f"cannot connect to the host ({unreachable(exc.__cause__)})")
            return FileInfo(None, "", "file not found")
        except AccessDenied as exc:
            return FileInfo(None, "", str(exc))
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

        def open_checked() -> IO[bytes]:
            refused = self.refused(url)  # again at open: a link may have changed since the stat
            if refused:
                raise AccessDenied(f"not allowed: {refused}")
            if _split_url(url)[0] == "file":
                return open(os.path.realpath(path), "rb")  # the path just checked, not a link
            return fs.open(path, "rb")

        return open_checked
