"""Loading a config file with every device kind pictl knows (what the CLI and the daemon use)."""

from __future__ import annotations

from controller.devices.registry import REGISTRY
from controller.settings import load as settings
from controller.settings.load import Config


def load(path: str) -> Config:
    """Read and validate *path*; raises :class:`controller.settings.reader.ConfigError`."""
    return settings.load(path, kinds=REGISTRY)


def loads(raw: bytes | str, path: str = "<config>") -> Config:
    """Validate TOML text; raises :class:`controller.settings.reader.ConfigError`."""
    return settings.loads(raw, path, kinds=REGISTRY)
