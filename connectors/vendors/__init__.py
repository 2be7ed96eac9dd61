"""The vendor registry: one line per vendor."""

from __future__ import annotations

import importlib
from typing import Any

from connectors.core.errors import ConfigError

#: vendor name -> "module:Class". A vendor listed in the job schema but not here is not built yet.
REGISTRY: dict[str, str] = {
    "kontent": "connectors.vendors.kontent:KontentConnector",
}


def vendor_class(name: str) -> Any:
    """The connector class for ``name``; ConfigError when the vendor is unknown or not built yet."""
    target = REGISTRY.get(name)
    if target is None:
        raise ConfigError(
            f"vendor {name!r} is not available in this version (available: {', '.join(sorted(REGISTRY))})"
        )
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
