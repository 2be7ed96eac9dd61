"""Masking and escaping for everything assetferry shows or stores: URL passwords and signatures
masked, control characters escaped. One place, used by the CLI, the rejects file, logs and the
flow-run parameters Prefect stores."""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"

#: Query parameters that carry a credential: presigned URL signatures (AWS SigV4/SigV2, Azure
#: SAS, GCS), tokens and keys. Matched case-insensitively on the whole parameter name.
SECRET_PARAMS = (
    "x-amz-signature", "x-amz-security-token", "x-amz-credential", "signature", "sig", "token",
    "access_token", "id_token", "refresh_token", "auth", "authorization", "api_key", "apikey", "key",
    "password", "passwd", "pwd", "secret", "client_secret", "x-goog-signature", "x-goog-credential",
    "googleaccessid", "awsaccesskeyid",
)
_PARAMS = "|".join(re.escape(p) for p in sorted(SECRET_PARAMS, key=len, reverse=True))
# ``?X-Amz-Signature=abc``, ``&sig=...``; also URL-encoded inside another URL (``%26sig%3D...``)
# and JSON-escaped (``\u0026``). The value runs to the next separator, quote or whitespace.
_QUERY_RE = re.compile(rf"(?i)((?:[?&;]|%26|%3F|\\u0026)(?:{_PARAMS})(?:=|%3D))[^&#\s\"'<>\\]+")
# ``scheme://user:password@host``: the password (not the user) is masked.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@\"'<>]*):([^@/\s\"'<>]+)@")
# C0 controls except newline and tab, DEL, C1 controls, and bidi overrides/isolates (which can
# make a terminal show text in another order than it is).
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_ALL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def mask_secrets(text: str) -> str:
    """``text`` with every URL password (``user:***@``) and credential-like query parameter value
    (``X-Amz-Signature=***``, ``sig=***``, ``token=***``...) masked. Anything else unchanged;
    idempotent."""
    if "://" not in text and "=" not in text and "%3D" not in text.upper():
        return text
    text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return _QUERY_RE.sub(lambda m: m.group(1) + MASK, text)


def escape_control(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters (ESC, CR, BEL, DEL, C1, bidi overrides) written as visible
    escapes (``\\x1b``, ``\\r``, ``\\u202e``), so a value can never drive the terminal.
    ``keep_newlines``: newlines and tabs stay (multi-line messages)."""
    pattern = _CONTROL_RE if keep_newlines else _CONTROL_ALL_RE
    return pattern.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group(0)
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
    if ch in named:
        return named[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: Any, *, keep_newlines: bool = True) -> str:
    """What may be shown to a human: ``str(value)`` masked (``mask_secrets``) and escaped
    (``escape_control``)."""
    return escape_control(mask_secrets(str(value)), keep_newlines=keep_newlines)


def mask_frame_text(frame: Any, columns: list[str]) -> Any:
    """A copy of a DataFrame whose ``columns`` (text) have their secrets masked; vectorised per
    column, only cells that may hold one are touched."""
    import pandas as pd

    out = frame.copy()
    for col in columns:
        values = out[col]
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            text = values.astype("string")
            suspect = text.str.contains("://|=|%3D", case=False, regex=True, na=False).astype(bool)
            if suspect.any():
                fixed = values.astype(object).copy()
                fixed[suspect] = [mask_secrets(v) for v in text[suspect].tolist()]
                out[col] = fixed if values.dtype == object else fixed.astype(values.dtype)
    return out


class RedactingFilter(logging.Filter):
    """Masks URL passwords and signatures in a log record's message (its arguments rendered in)
    and escapes control characters, before any handler writes or ships it. Add it to handlers:
    a filter on a logger does not see its children's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: leave it to the handler
            return True
        safe = clean(message)
        if safe != message or record.args:
            record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:  # the traceback's messages too (escaped lines kept)
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()


def redact_handlers(*loggers: str) -> None:
    """Add the (one) redacting filter to every handler of the named loggers (idempotent)."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_FILTER)
