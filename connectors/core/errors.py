"""Errors grouped by what the caller does next: stop, retry later, reject the row, or pause."""

from __future__ import annotations


class AssetferryError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AssetferryError):
    """The job cannot run as configured (bad job file, missing credential, bad settings).

    Stop and tell a human; retrying cannot help. The message is user-facing and must never
    contain a secret value.
    """


class AuthError(ConfigError):
    """The vendor refused the credentials (401/403). Stop the run: every later call would fail too."""


class TransientError(AssetferryError):
    """A failure that a later attempt may not repeat (429, 5xx, network).

    The HTTP layer retries these within seconds; a batch that still fails is retried by Prefect
    minutes later; rows that still fail are reported as ``failed`` and retried by the next run.
    """


class QuotaExhausted(TransientError):
    """The vendor's daily/hourly quota is used up: stop sending, leave the rest ``pending``."""


class RejectedError(AssetferryError):
    """The vendor (or our own validation) refused this row; resending it unchanged cannot help.

    ``field`` names the offending field when known. The row goes to the rejects file.
    """

    def __init__(self, reason: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.status = status
