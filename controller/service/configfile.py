"""Loading a config file with every device kind pictl knows (what the CLI and the daemon use)."""

from __future__ import annotations

from controller.devices.registry import REGISTRY
from controller.settings import load as settings
from controller.settings.load import Config


def load(path: str, *, devices_required: bool = True) -> Config:
    """Read and validate *path*; raises :class:`controller.settings.reader.ConfigError`.
    *devices_required* False: a config without devices (the fleet aggregator's)."""
    return settings.load(path, kinds=REGISTRY, devices_required=devices_required)


def loads(raw: bytes | str, path: str = "<config>", *, devices_required: bool = True) -> Config:
    """Validate TOML text; raises :class:`controller.settings.reader.ConfigError`."""
    return settings.loads(raw, path, kinds=REGISTRY, devices_required=devices_required)
