"""The daemon's configuration: TOML in, frozen dataclasses out, validated once.

Every problem is reported as ``FILE:LINE: field: message``; nothing later
re-validates. The sections are read by their own modules: [server], [events],
[metrics], [audit] (:mod:`controller.settings.sections`), [auth]
(:mod:`controller.settings.access`), shared buses such as [modbus.NAME] (their
drivers, :data:`drivers.registry.LINK_DRIVERS`) and [devices.NAME]
(:mod:`controller.settings.devices`, with the kind registry passed in).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli

from controller.security.policy import LockoutConfig, Role, Token
from controller.settings.access import read_auth
from controller.settings.devices import DeviceConfig, KindReader, Loader, read_devices
from controller.settings.mqtt import MqttConfig, read_mqtt
from controller.settings.reader import ConfigError, Document, Problem, Table
from controller.settings.sections import (
    AuditConfig,
    EventsConfig,
    MetricsConfig,
    ServerConfig,
    read_live,
    read_server,
)
from controller.settings.wamp import WampConfig, read_wamp
from drivers.registry import LINK_DRIVERS

GPIO_FACTORIES = ("auto", "lgpio", "rpigpio", "pigpio", "native")


@dataclass(frozen=True)
class Config:
    """A whole validated configuration."""

    path: str
    server: ServerConfig
    gpio_factory: str
    roles: dict[str, Role]
    tokens: tuple[Token, ...]
    devices: dict[str, DeviceConfig]
    events: EventsConfig = field(default_factory=lambda: EventsConfig(buffer=1000, max_pending_bytes=256 * 1024))
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig(tokens=()))
    audit: AuditConfig = field(default_factory=lambda: AuditConfig(file=None, max_bytes=10 * 1024 * 1024, backups=5,
                                                                   fsync=False))
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    bus_links: dict[str, dict[str, Any]] = field(default_factory=dict)  # bus kind -> link name -> link config
    mqtt: MqttConfig | None = None  # the MQTT bridge; None: not configured
    wamp: WampConfig | None = None  # this daemon as a node on a WAMP router, when configured

    def links(self, kind: str) -> dict[str, Any]:
        """The shared links of one bus kind (``[modbus.NAME]``), by name."""
        return self.bus_links.get(kind, {})

    @property
    def modbus(self) -> dict[str, Any]:
        return self.links("modbus")

    def with_links(self, links: Mapping[str, Mapping[str, Any]], devices: Mapping[str, DeviceConfig]) -> Config:
        """This config with its links and devices replaced (the simulated plant rewrites both)."""
        return dataclasses.replace(self, bus_links={k: dict(v) for k, v in links.items() if v},
                                   devices=dict(devices))


def load(path: str, *, kinds: Mapping[str, KindReader], devices_required: bool = True) -> Config:
    """Read and validate *path*; raises :class:`ConfigError` listing every problem.

    *devices_required* False admits a config without devices (the fleet aggregator's: tokens only)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([Problem(path, None, f"cannot read: {exc.strerror or exc}")]) from None
    return loads(raw, path, kinds=kinds, devices_required=devices_required)


def loads(raw: bytes | str, path: str = "<config>", *, kinds: Mapping[str, KindReader],
          devices_required: bool = True) -> Config:
    """Validate TOML text; raises :class:`ConfigError` listing every problem."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        message = exc.msg if hasattr(exc, "msg") else str(exc)
        raise ConfigError([Problem(path, getattr(exc, "lineno", None), f"TOML syntax: {message}")]) from None
    doc = Document(path, text)
    config = _read(doc, data, kinds, devices_required)
    if doc.problems or config is None:
        raise ConfigError(doc.problems)
    return config


def _read(doc: Document, data: dict[str, Any], kinds: Mapping[str, KindReader],
          devices_required: bool = True) -> Config | None:
    root = Table(doc, (), data)
    links: dict[str, dict[str, Any]] = {}
    for kind, driver in LINK_DRIVERS.items():
        links[kind] = {}
        for name, t in root.tables(kind):
            link = driver.read(name, t)
            if link is not None:
                links[kind][name] = link
    loader = Loader(doc, links)

    server = read_server(root.section("server"), doc)
    gpio = root.table("gpio")
    factory = "auto"
    if gpio is not None:
        factory = gpio.string("factory", default="auto", choices=GPIO_FACTORIES)
        gpio.finish()

    roles, tokens, lockout = read_auth(root.table("auth"))
    events, metrics, audit = read_live(root, doc, tokens)
    mqtt = read_mqtt(root.table("mqtt"), frozenset(roles), os.path.dirname(os.path.abspath(doc.file)))
    devices = read_devices(root, loader, kinds)
    wamp = read_wamp(root.table("wamp"), roles)
    root.finish()
    if devices_required and not devices and not doc.problems:  # nothing misspelled either: the file has none
        doc.problems.append(Problem(doc.file, doc.last_line, "devices: no devices configured (add a [devices.NAME] "
                                    "table)"))
    if server is None:
        return None
    return Config(
        path=doc.file, server=server, gpio_factory=factory or "auto", roles=roles, tokens=tokens, devices=devices,
        events=events, metrics=metrics, audit=audit, lockout=lockout, mqtt=mqtt, wamp=wamp,
        bus_links={kind: found for kind, found in links.items() if found},
    )
