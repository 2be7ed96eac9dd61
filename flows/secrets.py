"""Registers the ``secret:BLOCK_NAME`` credential scheme (Prefect Secret blocks)."""

from __future__ import annotations

from assetferry.connectors.core.credentials import RESOLVERS
from assetferry.connectors.core.errors import ConfigError


def _from_secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError:
        raise ConfigError(f"Prefect Secret block {name!r} not found") from None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Prefect Secret block {name!r} holds no string value")
    return value


RESOLVERS["secret"] = _from_secret_block
