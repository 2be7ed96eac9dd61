"""Errors grouped by what the caller does next: stop, retry later, reject rows, or pause until a quota resets."""

from __future__ import annotations

from typing import Any


class AssetferryError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AssetferryError):
    """The job cannot run as configured (bad job file, missing credential, bad settings).

    Stop and tell a human; retrying cannot help. The message is user-facing and must never
    contain a secret value.
    """


class AuthError(ConfigError):
    """The vendor refused the credentials (401/403). Stop the run: every later call would fail too."""


class VendorResponseError(AssetferryError):
    """An error answer from the vendor, kept with its (redacted) body so a classifier or a
    connector can read it: ``status`` (None for network errors), ``body`` (text, redacted) and
    ``data`` (the parsed JSON body, or None)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", data: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.data = data


class TransientError(VendorResponseError):
    """A failure that a later attempt may not repeat (429, 5xx, network).

    The HTTP layer retries these within seconds; a batch that still fails is retried by Prefect
    minutes later; rows that still fail are reported as ``failed`` and retried by the next run.
    ``maybe_applied``: a non-idempotent request failed after it was sent, so the vendor may have
    acted on it (the loader looks it up before sending again).
    """

    maybe_applied: bool = False
    #: Our side failed to send (e.g. a file that changed while sent), not the vendor: it does not
    #: count towards "the vendor looks down".
    local: bool = False


class QuotaExhausted(VendorResponseError):
    """The vendor's daily/hourly allowance is used up. Never retried (not a ``TransientError``):
    the loader stops sending, rows not attempted stay ``pending``, the run stops cleanly and the
    next run continues. ``resets_at`` is an ISO time when the vendor says when it resets."""

    def __init__(self, message: str, *, resets_at: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.resets_at = resets_at


class RejectedError(VendorResponseError):
    """The vendor (or our own validation) refused a request; resending it unchanged cannot help.

    ``field`` names the offending field when known. ``rows`` maps a row's position in the
    request (0-based, as the vendor names it, e.g. an ActionHub 422 ``loc`` index) to
    ``(field, reason)`` when the vendor says which rows were bad: the loader rejects exactly those
    and resends the rest. Without ``rows``, every row of the request is rejected (or, for a
    splittable request, the loader bisects to find the bad ones).
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        status: int | None = None,
        rows: dict[int, tuple[str | None, str]] | None = None,
        body: str = "",
        data: Any = None,
    ) -> None:
        super().__init__(reason, status=status, body=body, data=data)
        self.reason = reason
        self.field = field
        self.rows = rows or {}
