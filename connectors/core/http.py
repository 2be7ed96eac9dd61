"""The HTTP layer every vendor shares: limiter, retry table, Retry-After, error translation."""

from __future__ import annotations

import atexit
import email.utils
import logging
import random
import time
import json as jsonlib
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from assetferry.connectors.core.errors import AuthError, QuotaExhausted, RejectedError, TransientError
from assetferry.connectors.core.ratelimit import Limiter, SlidingWindowLimiter

log = logging.getLogger("assetferry.http")

try:  # h11's own error escapes httpcore's mapping while a streamed body is being written
    from h11 import LocalProtocolError as _H11LocalProtocolError

    _LOCAL_PROTOCOL_ERRORS: tuple[type[Exception], ...] = (httpx.LocalProtocolError, _H11LocalProtocolError)
except ImportError:  # pragma: no cover - h11 comes with httpx
    _LOCAL_PROTOCOL_ERRORS = (httpx.LocalProtocolError,)

#: The default table, status -> what the caller does next: retry (transient), stop (auth), else
#: reject the request. A connector's ``classify`` reads the body first and overrides it.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
MAX_BODY = 64 * 1024  # error bodies kept for classification (redacted), at most this many characters


class Action(str, Enum):
    """What to do with a vendor answer."""

    OK = "ok"  # success: return the response
    RETRY = "retry"  # transient: wait (Retry-After or backoff) and send again
    REAUTH = "reauth"  # the token expired: fetch a new one once, then send again
    QUOTA = "quota"  # an allowance is spent: stop the run, the rest stays pending
    AUTH = "auth"  # credentials refused: stop the run
    REJECT = "reject"  # this request (or some of its rows) can never succeed as sent


@dataclass(frozen=True)
class Verdict:
    """A classified answer. ``rows`` names bad rows by their 0-based position in the request
    (``{index: (field, reason)}``) when the vendor says which; ``resets_at`` is when a quota
    resets (ISO text) when the vendor says so; ``retry_after`` overrides the header."""

    action: Action
    message: str = ""
    field: str | None = None
    rows: dict[int, tuple[str | None, str]] | None = None
    retry_after: float | None = None
    resets_at: str | None = None


#: A connector's classifier: a Verdict, or None to use the default status table.
Classifier = Callable[[httpx.Response], "Verdict | None"]


def default_verdict(response: httpx.Response) -> Verdict:
    status = response.status_code
    if status < 300:
        return Verdict(Action.OK)
    if status in AUTH_STATUSES:
        return Verdict(Action.AUTH)
    if status in TRANSIENT_STATUSES:
        return Verdict(Action.RETRY)
    return Verdict(Action.REJECT)


def json_body(response: httpx.Response) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


class VendorAuth(httpx.Auth):
    """Credentials with a lifecycle. ``secrets`` lists every value to redact; ``refresh`` gets a
    new token after the vendor said the current one expired (a static key cannot, and raises
    AuthError); ``close`` releases a token at the end of a run."""

    def secrets(self) -> list[str]:
        return []

    def refresh(self, client: httpx.Client) -> None:
        raise AuthError("the vendor asked to re-authenticate, but this credential is a static key")

    def close(self, client: httpx.Client) -> None:
        """Release what the auth holds (a session token); a static key holds nothing."""


class HeaderAuth(VendorAuth):
    """A static key sent in headers (``Authorization: Bearer ...``, ``X-API-KEY: ...``)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def secrets(self) -> list[str]:
        out = []
        for value in self._headers.values():
            out.append(value)
            out += [part for part in value.split(" ") if len(part) >= 6]
        return out

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._headers)
        yield request


class TokenAuth(VendorAuth):
    """A session token fetched with long-lived credentials, cached, fetched again on ``refresh``
    and released on ``close``. ``fetch(client) -> headers`` performs the vendor's token call;
    ``release(client, headers)`` its logout call (optional). ``static`` are the long-lived
    secret values (redacted too). Thread-safe: one token shared by every thread of a batch."""

    def __init__(
        self,
        fetch: Callable[[httpx.Client], dict[str, str]],
        *,
        release: Callable[[httpx.Client, dict[str, str]], None] | None = None,
        static: Iterable[str] = (),
    ) -> None:
        self._fetch, self._release = fetch, release
        self._static = [s for s in static if s]
        self._headers: dict[str, str] | None = None
        self._last: dict[str, str] | None = None  # the latest token, even once released
        self._issued: list[str] = []
        self._lock = threading.Lock()
        self._sent = threading.local()
        self.fetched = 0

    def secrets(self) -> list[str]:
        return self._static + self._issued

    def ensure(self, client: httpx.Client) -> dict[str, str]:
        with self._lock:
            return self._ensure_locked(client)

    def _ensure_locked(self, client: httpx.Client) -> dict[str, str]:
        if self._headers is None:
            self._headers = self._last = self._fetch(client)
            self.fetched += 1
            self._issued += [v for v in self._headers.values() if len(v) >= 6]
        return self._headers

    def refresh(self, client: httpx.Client) -> None:
        with self._lock:  # drop and fetch in one step: no thread ever sees no token
            # Drop the token only if it is still the one this thread's refused request carried:
            # when several threads hear "expired" at once, one new token serves them all.
            sent = getattr(self._sent, "headers", None)
            if sent is None or self._headers is sent:
                self._headers = None
            self._ensure_locked(client)

    def close(self, client: httpx.Client) -> None:
        with self._lock:
            headers, self._headers = self._headers, None
        if headers is not None and self._release is not None:
            try:
                self._release(client, headers)
            except Exception:  # noqa: BLE001 - best effort: a token also expires on its own
                log.warning("could not release the session token (it expires on its own)")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # A token released meanwhile (another run's finish) is still sent: the vendor refuses it
        # and the caller re-authenticates, instead of this thread failing.
        headers = self._headers if self._headers is not None else self._last
        assert headers is not None, "call ensure() before sending"
        self._sent.headers = headers  # what this thread sent, for ``refresh``
        request.headers.update(headers)
        yield request


_AUTHS: dict[str, VendorAuth] = {}
_AUTHS_LOCK = threading.Lock()


def shared_auth(key: str, factory: Callable[[], VendorAuth]) -> VendorAuth:
    """One auth object per credential per process, like ``ratelimit.shared_limiter``: a connector
    is rebuilt for every batch task, but a session token is fetched once and shared by every
    batch of a run (and later runs in the same process), refreshed when the vendor says it
    expired, and released by the connector's ``finish`` step (``close``; the next use fetches a
    new one). ``key`` names the credential without containing it (e.g. URL + account + a hash of
    the key)."""
    with _AUTHS_LOCK:
        auth = _AUTHS.get(key)
        if auth is None:
            auth = _AUTHS[key] = factory()
        return auth


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the HTTP layer tries before giving the failure to the caller.

    Worst case per request: ``attempts`` sends, sleeping at most ``max_wait`` each time, so about
    ``attempts * max_wait`` seconds. The batch-level retry (Prefect) comes on top of this.
    """

    attempts: int = 5
    backoff: float = 0.5  # first wait after a 5xx/network error; doubles, with jitter
    max_wait: float = 60.0  # cap for Retry-After and backoff
    default_retry_after: float = 10.0  # for a 429 without Retry-After (Wordbee, Ex Libris)


ErrorParser = Callable[[httpx.Response], str]


def _plain_error(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:300]}"


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class VendorHTTP:
    """A pooled ``httpx.Client`` wrapped with the vendor's auth, limiter, retry policy and classifier.

    Every non-2xx answer goes through ``classify`` (the connector's, falling back to the default
    status table) and becomes: a retry (429/5xx/network: ``Retry-After`` honoured, a 429 pauses
    every thread sharing the limiter), one re-authentication then a retry, or an exception that
    keeps the redacted body: ``AuthError`` (stop the run), ``QuotaExhausted`` (stop, rest pending),
    ``RejectedError`` (reject the rows, never retried; ``rows`` when the vendor names them),
    ``TransientError`` (still failing after the policy's attempts). Messages and bodies pass
    through ``redact`` so no secret value can reach a log or a file. One instance per batch,
    over the process's shared connection pool when built with a ``pool_key``; thread-safe (the
    loader sends a batch's units from several threads).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: VendorAuth | None = None,
        limiter: Limiter | None = None,
        policy: RetryPolicy = RetryPolicy(),
        classify: Classifier | None = None,
        error_parser: ErrorParser = _plain_error,
        secrets: Iterable[str] = (),
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pool_key: str | None = None,
    ) -> None:
        def build() -> httpx.Client:
            return httpx.Client(
                base_url=base_url,
                headers=dict(headers or {}),
                timeout=httpx.Timeout(timeout, connect=10.0),
                transport=transport,
                follow_redirects=False,
                verify=_ssl_context(),
            )

        # With a ``pool_key`` the connection pool is the process's shared one for that vendor
        # budget (see ``shared_client``): ``close`` leaves it open for the next batch.
        self._owns_client = pool_key is None
        if pool_key is None:
            self.client = build()
        else:
            key = f"{pool_key}|{base_url}|{timeout}|{id(transport) if transport is not None else ''}"
            self.client = shared_client(key, build)
        self.auth = auth
        self.limiter: Limiter = limiter or SlidingWindowLimiter([])
        self.policy = policy
        self.classify = classify
        self.error_parser = error_parser
        self._secrets = [s for s in secrets if s]
        self._sleep = sleep
        self.requests_sent = 0
        self.throttled = 0
        self._counts = threading.Lock()  # the counters above, updated from several threads

    def redact(self, text: str) -> str:
        secrets = self._secrets + (self.auth.secrets() if self.auth else [])
        for s in sorted(set(secrets), key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
        return text

    def _verdict(self, response: httpx.Response) -> Verdict:
        verdict = self.classify(response) if self.classify else None
        return verdict if verdict is not None else default_verdict(response)

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: Callable[[], Any] | None = None,
        data: Mapping[str, Any] | None = None,
        files: Callable[[], Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send with retries; return the successful response or raise as the class docstring says.

        ``idempotent=False`` (a create that duplicates when repeated): only a 429 or a
        connection that never opened is retried here; any other failure after sending raises
        ``TransientError`` with ``maybe_applied`` set, because the vendor may have acted: the
        loader asks the vendor (lookup) before sending again.

        ``content`` and ``files`` are factories (e.g. ``lambda: open(path, "rb")``) so that each
        attempt streams the body afresh: a file is never read whole into memory, and a retry
        never resends a half-consumed stream.
        """
        policy = self.policy
        backoff = policy.backoff
        last: str = ""
        reauthed = False
        attempt = 0
        while attempt < policy.attempts:
            attempt += 1
            if isinstance(self.auth, TokenAuth):
                self.auth.ensure(self.client)
            slot = self.limiter.acquire()
            released = False
            body = None
            upload = None
            try:
                try:
                    body = content() if content is not None else None
                    upload = files() if files is not None else None
                except OSError as exc:  # this row's file: stat'ed fine, but cannot be opened now
                    why = str(exc) if isinstance(exc, PermissionError) and str(exc).startswith("not allowed") \
                        else (exc.strerror or type(exc).__name__)
                    raise RejectedError(f"cannot open file: {why}", field="file") from None
                try:
                    request = self.client.build_request(method, url, json=json, content=body, data=data,
                                                        files=upload, params=params, headers=headers)
                except (UnicodeError, ValueError, TypeError) as exc:  # e.g. a non-ASCII header value
                    raise RejectedError(f"request cannot be built ({type(exc).__name__}): "
                                        f"{self.redact(str(exc))[:200]}") from None
                with self._counts:
                    self.requests_sent += 1
                response = self.client.send(request, auth=self.auth or httpx.USE_CLIENT_DEFAULT)
                # the answer is back: release at once, so the limiter's round trip (its measure
                # of how late a request was) does not include classifying it
                self.limiter.release(slot)
                released = True
            except _LOCAL_PROTOCOL_ERRORS as exc:
                # Our side broke the request (a body longer or shorter than its Content-Length: a
                # file still being written). Not the vendor's fault, and not retried at once.
                error = TransientError(f"{method} {url}: the request body did not match its size "
                                       f"({self.redact(str(exc))[:200]}); was the file still being written?")
                error.local = True
                error.maybe_applied = not idempotent
                raise error from None
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                if not idempotent and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise _unsure(f"{method} {url}: {self.redact(last)}") from None
                wait = min(backoff, policy.max_wait) * (1 + random.random() / 4)
                backoff *= 2
                throttled = False
            else:
                verdict = self._verdict(response)
                if verdict.action is Action.OK:
                    return response
                status = response.status_code
                text = self.redact(response.text[:MAX_BODY])
                parsed = _parse(text)
                message = self.redact(verdict.message or self.error_parser(response))
                if verdict.action is Action.REAUTH and not reauthed and self.auth is not None:
                    reauthed = True
                    attempt -= 1  # a re-authentication is not a failed attempt
                    log.info("%s %s: %s; fetching a new token", method, url, message)
                    self.auth.refresh(self.client)
                    continue
                if verdict.action in (Action.AUTH, Action.REAUTH):
                    raise AuthError(f"{method} {url} refused ({status}): {message}")
                if verdict.action is Action.QUOTA:
                    raise QuotaExhausted(f"{method} {url}: {message}", resets_at=verdict.resets_at,
                                         status=status, body=text, data=parsed)
                if verdict.action is Action.REJECT:
                    raise RejectedError(message, status=status, field=verdict.field, rows=verdict.rows,
                                        body=text, data=parsed)
                last = f"HTTP {status}: {message}"
                if not idempotent and status != 429:
                    raise _unsure(f"{method} {url}: {self.redact(last)}", status=status, body=text, data=parsed)
                hinted = verdict.retry_after if verdict.retry_after is not None else retry_after_seconds(response)
                throttled = status == 429
                if throttled:
                    with self._counts:
                        self.throttled += 1
                    wait = min(policy.max_wait, hinted if hinted is not None else policy.default_retry_after)
                    # Pause every thread sharing the vendor budget, not just this one; the next
                    # acquire() waits it out.
                    self.limiter.penalise(wait)
                else:
                    wait = hinted if hinted is not None else backoff * (1 + random.random() / 4)
                    backoff *= 2
                wait = min(wait, policy.max_wait)
            finally:
                if not released:
                    self.limiter.release(slot)
                for stream in (body, upload):
                    _close(stream)
            if attempt < policy.attempts:
                log.warning(
                    "%s %s: %s; retry %d/%d in %.1fs",
                    method, url, self.redact(last), attempt, policy.attempts - 1, wait,
                )
                if not throttled:
                    self._sleep(wait)
        raise TransientError(f"{method} {url}: {self.redact(last)} (after {policy.attempts} attempts)")

    def close(self) -> None:
        """Close the connection pool if this instance owns it; a shared pool (``pool_key``)
        stays open for the next batch and is closed at process exit (``close_shared_clients``).
        The auth (a session token) outlives it: a token is shared by every batch of a run and
        released by the connector's finish step."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> VendorHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLIENTS: dict[str, httpx.Client] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(key: str, factory: Callable[[], httpx.Client]) -> httpx.Client:
    """One pooled ``httpx.Client`` per vendor budget per process, like ``shared_auth`` and
    ``ratelimit.shared_limiter``: a connector is rebuilt for every batch task, but its
    connections (TCP, TLS sessions) are reused by every batch and every thread (``httpx.Client``
    is thread-safe for sending). ``key`` names the vendor, URL, destination and credential
    without containing a secret. An idle connection older than the pool's keep-alive expiry
    (5 s) is dropped at the pool's next use instead of being reused; every client is closed at
    process exit. A client found closed (``close_shared_clients``) is replaced."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None or client.is_closed:
            client = _CLIENTS[key] = factory()
        return client


def close_shared_clients() -> None:
    """Close every shared pool (process exit; tests). Not safe while a batch is sending."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(close_shared_clients)

_SSL: Any = None
_SSL_LOCK = threading.Lock()


def _ssl_context() -> Any:
    """One default SSL context per process: building one per client costs milliseconds of CPU
    (certificate store loading), which one client per batch multiplied."""
    global _SSL
    with _SSL_LOCK:
        if _SSL is None:
            _SSL = httpx.create_ssl_context()
        return _SSL


def _unsure(message: str, **kw: Any) -> TransientError:
    error = TransientError(message + " (the vendor may have acted; not resent blindly)", **kw)
    error.maybe_applied = True
    return error


def _parse(text: str) -> Any:
    try:
        return jsonlib.loads(text)
    except ValueError:
        return None


def _close(stream: Any) -> None:
    """Close a streamed body: a file object, or the file objects inside a ``files=`` mapping."""
    if stream is None:
        return
    if hasattr(stream, "close"):
        stream.close()
        return
    values = stream.values() if isinstance(stream, Mapping) else stream if isinstance(stream, list | tuple) else []
    for value in values:
        item = value[1] if isinstance(value, tuple) and len(value) > 1 else value
        if isinstance(item, tuple):
            item = item[1] if len(item) > 1 else None
        if hasattr(item, "close"):
            item.close()
