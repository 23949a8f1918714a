"""What a config reload changes: a pure comparison of two validated configs.

Configs are frozen dataclasses, so "did this device change" is ``==`` on its
config, whatever its kind or the buses its points name. The daemon applies the
plan (:meth:`controller.service.daemon.Daemon.apply`); nothing here touches hardware.

Top-level settings are sorted into three groups:

- ``devices``: diffed by name into kept / changed / removed / added;
- access (``roles``, ``tokens``) and the server settings in
  :data:`LIVE_SERVER_FIELDS`: applied at once;
- everything else (``gpio_factory`` today; bus sections such as Modbus links
  or serial ports as they are added to :class:`Config`): bus-wide settings the
  running buses were opened with. They take effect at the next restart; the
  plan names each one that changed, and the daemon keeps the running value in
  force. A new bus kind that can be re-opened in place adds its field to
  :data:`APPLIED_FIELDS` together with the code that does it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from controller.settings.load import Config
from controller.settings.sections import ServerConfig

# Config fields the reload applies itself; every other field is a restart-only bus setting.
APPLIED_FIELDS = frozenset({"path", "devices", "roles", "tokens", "server"})
# [server] settings that apply to the running listener and to calls from now on.
LIVE_SERVER_FIELDS = frozenset({"allowed_origins", "max_batch", "trusted_proxies", "allowed_hosts"})
# How server fields are named in the config file, for log lines.
SERVER_KEYS = {"host": "server.listen", "port": "server.listen", "max_frame_bytes": "server.max_frame_bytes",
               "allowed_origins": "server.allowed_origins", "max_batch": "server.max_batch"}


@dataclass(frozen=True)
class ReloadPlan:
    """The difference between the running config and a new one."""

    kept: tuple[str, ...]  # devices whose config is equal: their objects and state stay untouched
    changed: tuple[str, ...]  # devices to close (outputs safe) and build again
    removed: tuple[str, ...]  # devices to close and drop
    added: tuple[str, ...]  # devices to build
    access_changed: bool  # tokens or roles differ: new logins use the new ones
    server_changed: tuple[str, ...]  # live [server] settings that differ
    restart_needed: tuple[str, ...]  # one phrase per setting that only a restart applies
    in_force: Config  # the new config, with restart-only settings kept at their running values

    @property
    def touches_devices(self) -> bool:
        return bool(self.changed or self.removed or self.added)

    def summary(self) -> str:
        parts = [f"{len(self.kept)} device(s) kept"]
        for label, names in (("rebuilt", self.changed), ("removed", self.removed), ("added", self.added)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if self.access_changed:
            parts.append("tokens/roles updated")
        if self.server_changed:
            parts.append("updated: " + ", ".join(self.server_changed))
        return "; ".join(parts)


def _differing_keys(field: str, old: Any, new: Any) -> list[str]:
    """``field`` or, for a table of named things, ``field.NAME`` for each entry that differs
    (shared bus links are named as in the file: ``modbus.plant``)."""
    if field == "bus_links":
        return [key for kind in sorted(set(old) | set(new))
                for key in _differing_keys(kind, old.get(kind, {}), new.get(kind, {}))]
    if isinstance(old, dict) and isinstance(new, dict):
        return [f"{field}.{key}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return [field]


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare *old* (running) with *new* (just loaded and valid)."""
    kept = tuple(name for name, dc in new.devices.items() if old.devices.get(name) == dc)
    changed = tuple(name for name, dc in new.devices.items() if name in old.devices and old.devices[name] != dc)
    removed = tuple(name for name in old.devices if name not in new.devices)
    added = tuple(name for name in new.devices if name not in old.devices)

    restart: list[str] = []
    held: dict[str, Any] = {}  # top-level fields kept at their running value
    for f in dataclasses.fields(Config):
        if f.name in APPLIED_FIELDS:
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before != after:
            restart.extend(f"{key} changed" for key in _differing_keys(f.name, before, after))
            held[f.name] = before

    server_live: list[str] = []
    server_held: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        before, after = getattr(old.server, f.name), getattr(new.server, f.name)
        if before == after:
            continue
        key = SERVER_KEYS.get(f.name, f"server.{f.name}")
        if f.name in LIVE_SERVER_FIELDS:
            server_live.append(key)
        else:
            server_held[f.name] = before
            phrase = f"{key} changed"
            if phrase not in restart:
                restart.append(phrase)
    if server_held:
        held["server"] = dataclasses.replace(new.server, **server_held)

    return ReloadPlan(
        kept=kept, changed=changed, removed=removed, added=added,
        access_changed=(old.roles, old.tokens) != (new.roles, new.tokens),
        server_changed=tuple(server_live),
        restart_needed=tuple(restart),
        in_force=dataclasses.replace(new, **held),
    )
