"""Credential references (``env:NAME`` / ``secret:BLOCK``) resolved to SecretStr at the edge."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

from assetferry.connectors.core.errors import ConfigError

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


#: Storage-option names whose values are credentials: they must be references, never literals.
SENSITIVE_OPTION = re.compile(r"(?i)^(key|secret|token|password|passwd|sas_token|account_key|client_secret|"
                              r"session_token|aws_access_key_id|aws_secret_access_key|aws_session_token)$")
REFERENCE = re.compile(r"^(env|secret):[A-Za-z_][A-Za-z0-9_.\-/]*$")


def literal_secrets(options: Any, path: str = "") -> list[str]:
    """Dotted paths of sensitive storage options holding a literal value (not env:/secret:)."""
    found: list[str] = []
    if isinstance(options, Mapping):
        for k, v in options.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(v, Mapping):
                found += literal_secrets(v, where)
            elif SENSITIVE_OPTION.match(str(k)) and not (isinstance(v, str) and REFERENCE.match(v)):
                found.append(where)
    return found


def resolve_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of fsspec storage options with every ``env:``/``secret:`` string value resolved.

    Resolved values exist only in the returned dict (handed straight to fsspec); the job, its
    Prefect parameters and logs keep the references. Raises ConfigError naming the option.
    """
    def walk(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, str) and REFERENCE.match(value):
            scheme, _, name = value.partition(":")
            try:
                return RESOLVERS[scheme](name)
            except KeyError:
                raise ConfigError(f"{where}: unknown reference scheme {scheme!r}") from None
            except ConfigError as exc:
                raise ConfigError(f"{where} ({value}): {exc}") from None
        return value

    return {k: walk(v, f"source.options.{k}") for k, v in options.items()}
