"""Contract-suite kits, one module per vendor (``KIT``)."""
