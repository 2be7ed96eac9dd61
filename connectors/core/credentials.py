"""Credential references (``env:NAME`` / ``secret:BLOCK``) resolved to SecretStr at the edge."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from pydantic import SecretStr

from connectors.core.errors import ConfigError

Resolver = Callable[[str], str]


def _from_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set")
    return value


# The ``secret:`` scheme needs Prefect; flows/ registers it (connectors/ never imports prefect).
RESOLVERS: dict[str, Resolver] = {"env": _from_env}


def resolve_credentials(refs: Mapping[str, str]) -> dict[str, SecretStr]:
    """Turn ``{"api_key": "env:KONTENT_API_KEY"}`` into ``{"api_key": SecretStr(...)}``.

    Raises ConfigError naming the key and the reference (never the value) when one cannot be
    resolved. Values stay wrapped until the connector builds its auth header.
    """
    out: dict[str, SecretStr] = {}
    for key, ref in refs.items():
        scheme, _, name = ref.partition(":")
        resolver = RESOLVERS.get(scheme)
        if resolver is None:
            raise ConfigError(f"credentials.{key}: unknown reference scheme {scheme!r}")
        try:
            out[key] = SecretStr(resolver(name))
        except ConfigError as exc:
            raise ConfigError(f"credentials.{key} ({ref}): {exc}") from None
    return out
