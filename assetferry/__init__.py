"""assetferry: Prefect flows that move digital assets (files + metadata) into vendors' asset APIs.

The import names live under this one namespace (``assetferry.flows``, ``assetferry.tasks``,
``assetferry.connectors``, ``assetferry.sandbox``) while the source keeps the repository's
top-level folders; ``pyproject.toml`` maps each subpackage to its folder (``package-dir``).
"""
from __future__ import annotations

from pathlib import Path as _Path

try:
    from importlib.metadata import PackageNotFoundError as _NotFound, version as _version
    __version__ = _version("assetferry")
except _NotFound:  # a source checkout that was never installed
    __version__ = "0+unknown"

# A source checkout used without installing it (``python -m assetferry`` from the repository):
# the subpackages are the sibling folders. An installed wheel has them inside this folder, and
# an editable install maps them itself; this fallback only applies next to pyproject.toml.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "flows" / "cli.py").is_file():
    __path__.append(str(_root))  # type: ignore[name-defined]  # noqa: F821
