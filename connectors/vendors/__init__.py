"""The vendor registry: one line per vendor."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from connectors.core.errors import ConfigError

if TYPE_CHECKING:
    from connectors.vendors.base import ConnectorFactory

#: vendor name -> "module:Class". A vendor listed in the job schema but not here is not built yet.
REGISTRY: dict[str, str] = {
    "kontent": "connectors.vendors.kontent:KontentConnector",
}


def vendor_class(name: str) -> ConnectorFactory:
    """The connector class for ``name``; ConfigError when the vendor is unknown or not built yet."""
    target = REGISTRY.get(name)
    if target is None:
        raise ConfigError(
            f"vendor {name!r} is not available in this version (available: {', '.join(sorted(REGISTRY))})"
        )
    module, _, cls = target.partition(":")
    factory: Any = getattr(importlib.import_module(module), cls)
    return factory
