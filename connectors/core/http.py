"""The HTTP layer every vendor shares: limiter, retry table, Retry-After, error translation."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.core.errors import AuthError, RejectedError, TransientError
from connectors.core.ratelimit import Limiter, SlidingWindowLimiter

log = logging.getLogger("assetferry.http")

#: status -> what the caller does next: retry (transient), stop (auth), else reject the request.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})


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
    """A pooled ``httpx.Client`` wrapped with the vendor's limiter and retry policy.

    Raises ``AuthError`` (401/403: stop the run), ``RejectedError`` (other 4xx: reject the row,
    never retried), ``TransientError`` (429/5xx/network still failing after the policy's
    attempts). Messages pass through ``redact`` so no secret value can reach a log or a file.
    One instance per batch (not per request); close it or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        limiter: Limiter | None = None,
        policy: RetryPolicy = RetryPolicy(),
        error_parser: ErrorParser = _plain_error,
        secrets: Iterable[str] = (),
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = httpx.Client(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
        )
        self.limiter: Limiter = limiter or SlidingWindowLimiter([])
        self.policy = policy
        self.error_parser = error_parser
        self._secrets = [s for s in secrets if s]
        self._sleep = sleep
        self.requests_sent = 0
        self.throttled = 0

    def redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries; return the 2xx response or raise as the class docstring says.

        ``content`` is a factory (e.g. ``lambda: open(path, "rb")``) so that each attempt
        streams the body afresh: a file is never read whole into memory, and a retry never
        resends a half-consumed stream.
        """
        policy = self.policy
        backoff = policy.backoff
        last: str = ""
        for attempt in range(1, policy.attempts + 1):
            slot = self.limiter.acquire()
            body = None
            try:
                body = content() if content is not None else None
                self.requests_sent += 1
                response = self.client.request(method, url, json=json, content=body, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                wait = min(backoff, policy.max_wait) * (1 + random.random() / 4)
                backoff *= 2
            else:
                status = response.status_code
                if status < 300:
                    return response
                message = self.redact(self.error_parser(response))
                if status in AUTH_STATUSES:
                    raise AuthError(f"{method} {url} refused ({status}): {message}")
                if status not in TRANSIENT_STATUSES:
                    raise RejectedError(message, status=status)
                last = f"HTTP {status}: {message}"
                hinted = retry_after_seconds(response)
                if status == 429:
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
                self.limiter.release(slot)
                if body is not None and hasattr(body, "close"):
                    body.close()
            if attempt < policy.attempts:
                log.warning(
                    "%s %s: %s; retry %d/%d in %.1fs",
                    method, url, self.redact(last), attempt, policy.attempts - 1, wait,
                )
                if not last.startswith("HTTP 429"):
                    self._sleep(wait)
        raise TransientError(f"{method} {url}: {self.redact(last)} (after {policy.attempts} attempts)")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> VendorHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

