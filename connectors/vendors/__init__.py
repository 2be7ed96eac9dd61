"""The vendor registry: one line per vendor. Job validation, the CLI, the sandbox, the demo and
the contract suite all read it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from assetferry.connectors.core.errors import ConfigError

if TYPE_CHECKING:
    from assetferry.connectors.vendors.base import Connector, VendorSpec

#: vendor name -> "module:SPEC". Adding a vendor: one connector module, one simulator, one line here.
REGISTRY: dict[str, str] = {
    "kontent": "assetferry.connectors.vendors.kontent:SPEC",
    "esploro": "assetferry.connectors.vendors.esploro:SPEC",
    "mediapocket": "assetferry.connectors.vendors.mediapocket:SPEC",
    "actionhub": "assetferry.connectors.vendors.actionhub:SPEC",
    "wordbee": "assetferry.connectors.vendors.wordbee:SPEC",
}
#: Vendors this project plans; those not in REGISTRY yet are "planned, not built".
KNOWN: tuple[str, ...] = ("kontent", "esploro", "mediapocket", "actionhub", "wordbee")
PLANNED: tuple[str, ...] = tuple(n for n in KNOWN if n not in REGISTRY)

_EXTRA: dict[str, VendorSpec] = {}  # registered at run time (tests' toy vendors)


def names() -> list[str]:
    return sorted({*REGISTRY, *_EXTRA})


def register(spec: VendorSpec) -> None:
    """Add a vendor at run time (a plugin or a test's toy vendor)."""
    _EXTRA[spec.name] = spec


def unregister(name: str) -> None:
    _EXTRA.pop(name, None)


def vendor_spec(name: str) -> VendorSpec:
    """The spec for ``name``; ConfigError when the vendor is unknown or not built yet."""
    if name in _EXTRA:
        return _EXTRA[name]
    target = REGISTRY.get(name)
    if target is None:
        later = " (planned, not built yet)" if name in PLANNED else ""
        raise ConfigError(f"vendor {name!r} is not available in this version{later} "
                          f"(available: {', '.join(names())})")
    module, _, attr = target.partition(":")
    spec: Any = getattr(importlib.import_module(module), attr)
    return spec


def vendor_class(name: str) -> type[Connector]:
    """The connector class for ``name`` (see ``vendor_spec``)."""
    module, _, cls = vendor_spec(name).connector.partition(":")
    factory: Any = getattr(importlib.import_module(module), cls)
    return factory
