"""The daemon's configuration: TOML in, frozen dataclasses out, validated once.

Every problem is reported as ``FILE:LINE: field: message``; nothing later
re-validates. Device kinds read their own tables (see :mod:`controller.kinds`);
point specs (which bus, which line) are read here, keyed by their driver:
``{ gpio = 17, ... }``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import keyword
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import tomli

from controller.configbase import ConfigError, Document, Problem, Table
from controller.secrets import MIN_SECRET_LENGTH, SecretHash, hash_secret, parse_hash
from controller.settings.wamp import WampConfig, read_wamp

DEFAULT_LISTEN = "127.0.0.1:8765"
# Method namespaces owned by the daemon: a device may not be named after them.
RESERVED_NAMES = frozenset({"system", "events", "session", "sim", "rpc"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
GPIO_PINS = range(0, 28)  # BCM numbers on the 40-pin header


@dataclass(frozen=True)
class GpioOutputSpec:
    """A relay or other digital output on a BCM-numbered GPIO line."""

    pin: int  # BCM number
    active_high: bool  # electrical level that energises the load


@dataclass(frozen=True)
class GpioInputSpec:
    """A digital input on a BCM-numbered GPIO line."""

    pin: int  # BCM number
    pull: str  # "up", "down" or "none" (external resistor)
    active_high: bool | None  # with pull "none": which level is active; else implied by the pull
    debounce_s: float | None  # ignore edges closer than this (real pins only)

    @property
    def active_level(self) -> bool:
        """The electrical level that reads as active."""
        if self.pull == "up":
            return False
        if self.pull == "down":
            return True
        return bool(self.active_high)


MODBUS_TABLES = ("coil", "discrete", "holding", "input")  # the four Modbus data tables
MODBUS_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}  # registers per value
PARITY = {"none": "N", "even": "E", "odd": "O"}


@dataclass(frozen=True)
class ModbusLinkConfig:
    """One Modbus bus: a TCP connection or an RS-485 (RTU) serial port, shared by its devices."""

    name: str  # the [modbus.NAME] key, referenced by points
    transport: str  # "tcp" or "rtu"
    host: str  # tcp: address of the device or gateway ("" for rtu)
    port: int | str  # tcp: port number; rtu: serial port path or pyserial URL
    baudrate: int  # rtu framing (ignored for tcp)
    bytesize: int
    parity: str  # "N", "E" or "O"
    stopbits: int
    timeout: float  # seconds to wait for each reply
    poll_interval: float  # seconds between polls of every point on the link
    offline_after: int  # consecutive failed requests before its points are offline
    backoff_max: float  # cap on the reconnect delay, which doubles from 0.1 s


@dataclass(frozen=True)
class ModbusAddress:
    """Where a value lives on a Modbus device, and how its words become a number."""

    table: str  # one of MODBUS_TABLES
    address: int  # protocol address (0-based), 0-65535
    device_id: int  # unit / slave id
    type: str  # "bool" for coils and discrete inputs, else one of MODBUS_TYPES
    word_order: str  # "big" (high word first) or "little", for 32-bit types
    scale: float  # engineering value = raw * scale + offset
    offset: float

    @property
    def width(self) -> int:
        """How many addresses the value occupies."""
        return MODBUS_TYPES.get(self.type, 1)


@dataclass(frozen=True)
class ModbusPointSpec:
    """A coil or register on a Modbus link; outputs may be verified elsewhere."""

    link: str  # name of a [modbus.NAME] link
    at: ModbusAddress
    verify: ModbusAddress | None = None  # read this instead of ``at`` to confirm a write
    verify_on: float | None = None  # verify value meaning "on" (switches)
    verify_off: float | None = None  # verify value meaning "off"


@dataclass(frozen=True)
class SerialSensorSpec:
    """A line-oriented sensor on a serial port, parsed by a regex with named groups."""

    port: str  # /dev/serial/by-id/... (or any pyserial URL)
    baudrate: int
    bytesize: int
    parity: str  # "N", "E" or "O"
    stopbits: int
    pattern: re.Pattern[str]  # named groups = the values
    units: dict[str, str]  # group name -> unit ("" when none given)
    request: bytes | None  # sent to ask for a reading, or None for sensors that talk by themselves
    request_interval: float  # seconds between requests
    stale_after: float  # no valid reading for this long = offline
    max_line: int  # longer lines (or that much data without a newline) are malformed

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.pattern.groupindex)


OutputSpec = GpioOutputSpec | ModbusPointSpec
InputSpec = GpioInputSpec | ModbusPointSpec


@dataclass(frozen=True)
class DeviceConfig:
    """What every device kind has; kinds subclass it with their own fields."""

    name: str  # valid identifier, the method prefix
    kind: str  # registered kind name
    timeout: float  # default confirmation deadline, seconds
    max_timeout: float  # cap on a caller's "timeout"


@dataclass(frozen=True)
class Role:
    """Which methods a token of this role may call, and how often.

    ``allow`` and ``deny`` are shell-style method patterns; the most specific
    pattern that matches decides (ties deny); nothing matching means deny.
    """

    name: str
    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    rate: float | None = None  # calls per second per connection; None: unlimited
    burst: int | None = None  # bucket size for rate


@dataclass(frozen=True)
class Token:
    """A named credential: only the hash of its secret is kept."""

    name: str
    role: str
    verifier: SecretHash = field(repr=False)


@dataclass(frozen=True)
class ServerConfig:
    host: str  # listen address
    port: int  # listen port
    allowed_origins: tuple[str, ...]  # browser origins allowed besides the daemon's own
    max_frame_bytes: int  # a bigger frame closes the connection with 1009
    max_batch: int  # JSON-RPC batch members accepted in one frame
    tls: tuple[str, str] | None = None  # (certificate, key) files: serve wss://
    auth_timeout: float = 10.0  # an unauthenticated connection is closed after this long
    max_connections: int = 200  # WebSocket connections in total
    max_connections_per_address: int = 20  # from one client address
    request_key_window: float = 300.0  # seconds a request_key is remembered (at-most-once)


@dataclass(frozen=True)
class EventsConfig:
    buffer: int  # recent events kept for since_seq resumes
    max_pending_bytes: int  # unsent bytes per subscriber before it is cut off (close 1013)


@dataclass(frozen=True)
class MetricsConfig:
    tokens: tuple[str, ...]  # names of tokens allowed to scrape /metrics; empty: open


@dataclass(frozen=True)
class AuditConfig:
    file: str | None  # JSON-lines file; None: audit to the log only
    max_bytes: int  # rotate when the file reaches this size
    backups: int  # rotated files kept
    fsync: bool  # fsync each entry (survives power loss; costs an SD-card write per action)


@dataclass(frozen=True)
class LockoutConfig:
    slowdown_after: int = 3  # failed auths from one address before answers are delayed
    lockout_after: int = 10  # failed auths from one address before it is locked out
    lockout_s: float = 60.0  # how long a lockout lasts


@dataclass(frozen=True)
class Config:
    """A whole validated configuration."""

    path: str
    server: ServerConfig
    gpio_factory: str
    roles: dict[str, Role]
    tokens: tuple[Token, ...]
    devices: dict[str, DeviceConfig]
    events: EventsConfig = EventsConfig(buffer=1000, max_pending_bytes=256 * 1024)
    metrics: MetricsConfig = MetricsConfig(tokens=())
    audit: AuditConfig = AuditConfig(file=None, max_bytes=10 * 1024 * 1024, backups=5, fsync=False)
    lockout: LockoutConfig = LockoutConfig()
    modbus: dict[str, ModbusLinkConfig] = field(default_factory=dict)  # links by name
    wamp: WampConfig | None = None  # this daemon as a node on a WAMP router, when configured


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; ValueError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"port must be 0-65535 (0: any free port), got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


class PinRegistry:
    """Catches a GPIO line claimed by two points."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}  # pin -> field that claimed it first

    def claim(self, table: Table, key: str, pin: int) -> None:
        where = ".".join(str(p) for p in (*table.path, key))
        first = self.owner.setdefault(pin, where)
        if first != where:
            table.problem(key, f"GPIO {pin} is already used by {first}")


class Loader:
    """Reads one document; device kinds call back into it for their points."""

    def __init__(self, doc: Document, modbus: dict[str, ModbusLinkConfig] | None = None) -> None:
        self.doc = doc
        self.pins = PinRegistry()
        self.modbus = modbus or {}  # links read before the devices

    def _driver(self, t: Table) -> str | None:
        if t.has("modbus"):
            return "modbus"
        if t.has("gpio"):
            return "gpio"
        t.problem(None, 'a point needs a driver key: gpio = PIN, or modbus = "LINK"')
        return None

    def binary_output(self, parent: Table, key: str) -> OutputSpec | None:
        """An on/off output: a GPIO line or a Modbus coil (not a register)."""
        spec = self.output_point(parent, key)
        if isinstance(spec, ModbusPointSpec) and spec.at.table != "coil":
            parent.problem(key, f"switches on and off: on Modbus that is a coil, not a {spec.at.table} register")
            return None
        return spec

    def output_point(self, parent: Table, key: str, required: bool = True) -> OutputSpec | None:
        t = parent.table(key, required=required)
        if t is None:
            return None
        driver = self._driver(t)
        if driver == "modbus":
            return self._modbus_point(t, writable=True)
        if driver is None:
            return None
        pin = t.integer("gpio", low=GPIO_PINS.start, high=GPIO_PINS.stop - 1)
        active = t.string("active", default="high", choices=("high", "low"))
        t.finish()
        if pin is None:
            return None
        self.pins.claim(t, "gpio", pin)
        return GpioOutputSpec(pin=pin, active_high=active == "high")

    def input_point(self, parent: Table, key: str, required: bool = True) -> InputSpec | None:
        t = parent.table(key, required=required)
        if t is None:
            return None
        driver = self._driver(t)
        if driver == "modbus":
            return self._modbus_point(t, writable=False)
        if driver is None:
            return None
        pin = t.integer("gpio", low=GPIO_PINS.start, high=GPIO_PINS.stop - 1)
        pull = t.string("pull", default="up", choices=("up", "down", "none"))
        active = t.string("active", default=None, choices=("high", "low"))
        debounce_ms = t.number("debounce_ms", default=None, high=1000.0, low_inclusive=True)
        t.finish()
        if pull == "none" and active is None:
            t.problem("active", 'required with pull = "none" (which level means active?)')
        if pull in ("up", "down") and active is not None:
            t.problem("active", f'implied by pull = "{pull}" (active {"low" if pull == "up" else "high"}); remove it')
        if pin is None:
            return None
        self.pins.claim(t, "gpio", pin)
        return GpioInputSpec(
            pin=pin,
            pull=pull or "up",
            active_high=None if active is None else active == "high",
            debounce_s=None if not debounce_ms else debounce_ms / 1000.0,
        )

    def _modbus_address(self, t: Table, tables: tuple[str, ...], device_id: int | None = None) -> ModbusAddress | None:
        """``coil = N`` (or discrete/holding/input) plus type, scale, offset, word_order, device_id."""
        given = [k for k in MODBUS_TABLES if t.has(k)]
        if len(given) != 1 or given[0] not in tables:
            t.problem(None, f"needs exactly one address key: {' / '.join(f'{k} = ADDRESS' for k in tables)}")
            for k in (*given, "device_id", "type", "scale", "offset", "word_order"):
                t.take(k)  # the problem above is the one to report
            return None
        table = given[0]
        address = t.integer(table, low=0, high=65535)
        dev = t.integer("device_id", default=device_id if device_id is not None else 1, low=0, high=255)
        bits = table in ("coil", "discrete")
        if bits:
            for k in ("type", "scale", "offset", "word_order"):
                if t.has(k):
                    t.problem(k, f"only for registers (holding, input), not a {table}")
                    t.take(k)
            kind, scale, offset, order = "bool", 1.0, 0.0, "big"
        else:
            kind = t.string("type", default="uint16", choices=tuple(MODBUS_TYPES))
            scale = t.number("scale", default=1.0, low=-math.inf)
            offset = t.number("offset", default=0.0, low=-math.inf)
            order = t.string("word_order", default="big", choices=("big", "little"))
            if scale == 0:
                t.problem("scale", "must not be 0")
                scale = None
            if kind in MODBUS_TYPES and address is not None and address + MODBUS_TYPES[kind] - 1 > 65535:
                t.problem(table, f"a {kind} at {address} runs past the last address 65535")
                address = None
        if None in (address, dev, kind, scale, offset, order):
            return None
        return ModbusAddress(table=table, address=address, device_id=dev, type=kind, word_order=order,
                             scale=scale, offset=offset)

    def _modbus_point(self, t: Table, writable: bool) -> ModbusPointSpec | None:
        link = t.string("modbus")
        if link is not None and link not in self.modbus:
            known = ", ".join(sorted(self.modbus)) or "none defined"
            t.problem("modbus", f"no Modbus link named {link!r} (links: {known}; define [modbus.{link}])")
            link = None
        at = self._modbus_address(t, ("coil", "holding") if writable else MODBUS_TABLES)
        verify = verify_on = verify_off = None
        v = t.table("verify") if writable else None
        if not writable and t.has("verify"):
            t.problem("verify", "only outputs are verified")
            t.take("verify")
        if v is not None:
            verify = self._modbus_address(v, MODBUS_TABLES, device_id=at.device_id if at else None)
            if at is not None and at.table == "coil":
                bits = verify is not None and verify.table in ("coil", "discrete")
                verify_on = v.number("on", default=1.0, low=-math.inf)
                verify_off = v.number("off", default=0.0, low=-math.inf)
                if verify_on is not None and verify_on == verify_off:
                    v.problem("on", "must differ from off")
                if bits and {verify_on, verify_off} - {None} - {0.0, 1.0}:
                    v.problem("on", "a bit reads 0 or 1: on and off must be 0 or 1")
            elif v.has("on") or v.has("off"):
                v.problem("on" if v.has("on") else "off", "on/off only apply to a switched coil")
                v.take("on")
                v.take("off")
            v.finish()
            if verify is None:
                return None
        t.finish()
        if link is None or at is None:
            return None
        return ModbusPointSpec(link=link, at=at, verify=verify, verify_on=verify_on, verify_off=verify_off)

    def serial_sensor(self, t: Table) -> SerialSensorSpec | None:
        """The serial keys of a sensor device: port, framing, pattern, units, request, stale_after."""
        port = t.string("port")
        baudrate = t.integer("baudrate", default=9600, low=50, high=4_000_000)
        bytesize = t.integer("bytesize", default=8, low=5, high=8)
        parity = t.string("parity", default="none", choices=tuple(PARITY))
        stopbits = t.integer("stopbits", default=1, low=1, high=2)
        pattern_text = t.string("pattern")
        pattern = None
        if pattern_text is not None:
            try:
                pattern = re.compile(pattern_text)
            except re.error as exc:
                t.problem("pattern", f"invalid regular expression: {exc}")
            else:
                if not pattern.groupindex:
                    t.problem("pattern", "needs at least one named group, e.g. T=(?P<temp>-?[0-9.]+)")
                    pattern = None
        units_table = t.table("units")
        units: dict[str, str] = {}
        if units_table is not None:
            for key in list(units_table.data):
                unit = units_table.string(key)
                if pattern is not None and key not in pattern.groupindex:
                    units_table.problem(key, f"no group named {key!r} in pattern")
                elif unit is not None:
                    units[key] = unit
            units_table.finish()
        request = t.string("request", default=None)
        request_bytes = None
        if request is not None:
            try:  # escapes such as \r\n also work inside a TOML literal string
                request_bytes = request.encode().decode("unicode_escape").encode("latin-1")
            except (UnicodeDecodeError, UnicodeEncodeError) as exc:
                t.problem("request", f"bad escape sequence: {exc.reason}")
                request = None
        interval = t.number("request_interval", default=1.0, high=3600.0)
        if t.has("request_interval") and request is None:
            t.problem("request_interval", "only meaningful with a request")
        stale = t.number("stale_after", default=5.0, high=86400.0)
        max_line = t.integer("max_line", default=256, low=16, high=65536)
        if None in (port, baudrate, bytesize, parity, stopbits, pattern, interval, stale, max_line) \
                or (t.has("request") and request_bytes is None):
            return None
        return SerialSensorSpec(
            port=port, baudrate=baudrate, bytesize=bytesize, parity=PARITY[parity], stopbits=stopbits,
            pattern=pattern, units={name: units.get(name, "") for name in pattern.groupindex},
            request=request_bytes,
            request_interval=interval, stale_after=stale, max_line=max_line,
        )

    def common(self, name: str, t: Table, default_timeout: float) -> dict[str, Any]:
        """Fields every device kind has."""
        timeout = t.number("timeout", default=default_timeout, high=3600.0)
        max_timeout = t.number("max_timeout", default=max(30.0, timeout or 0.0), high=3600.0)
        if timeout and max_timeout and max_timeout < timeout:
            t.problem("max_timeout", f"must be >= timeout ({timeout})")
        return {"name": name, "kind": t.data.get("kind"), "timeout": timeout, "max_timeout": max_timeout}


def load(path: str, *, devices_required: bool = True) -> Config:
    """Read and validate *path*; raises :class:`ConfigError` listing every problem.

    *devices_required* False admits a config without devices (the fleet aggregator's: tokens only)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([Problem(path, None, f"cannot read: {exc.strerror or exc}")]) from None
    return loads(raw, path, devices_required=devices_required)


def loads(raw: bytes | str, path: str = "<config>", *, devices_required: bool = True) -> Config:
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
    config = _read(doc, data, devices_required)
    if doc.problems or config is None:
        raise ConfigError(doc.problems)
    return config


def _read(doc: Document, data: dict[str, Any], devices_required: bool = True) -> Config | None:
    from controller import kinds  # the kind registry imports this module

    root = Table(doc, (), data)
    links = _read_modbus(root)
    loader = Loader(doc, links)

    server = _read_server(root.section("server"), doc)
    gpio = root.table("gpio")
    factory = "auto"
    if gpio is not None:
        factory = gpio.string("factory", default="auto", choices=("auto", "lgpio", "rpigpio", "pigpio", "native"))
        gpio.finish()

    roles, tokens, lockout = _read_auth(root.table("auth"))
    events, metrics, audit = _read_live(root, doc, tokens)

    devices: dict[str, DeviceConfig] = {}
    for name, t in root.tables("devices"):
        if not _NAME.fullmatch(name) or keyword.iskeyword(name):
            t.problem(None, "device name must be an identifier (letters, digits, _; not starting with a digit)")
            continue
        if name in RESERVED_NAMES:
            t.problem(None, f"device name {name!r} is reserved for the daemon's own methods")
            continue
        kind_name = t.string("kind")
        if kind_name is None:
            continue
        kind = kinds.REGISTRY.get(kind_name)
        if kind is None:
            t.problem("kind", f"unknown device kind {kind_name!r} (known: {', '.join(sorted(kinds.REGISTRY))})")
            continue
        device = kind.read_config(name, t, loader)
        t.finish()
        if device is not None:
            devices[name] = device
    if devices_required and not devices and not doc.problems:
        root.problem("devices", "no devices configured")
    wamp = read_wamp(root.table("wamp"), roles)
    root.finish()
    if server is None:
        return None
    return Config(
        path=doc.file, server=server, gpio_factory=factory or "auto", roles=roles, tokens=tokens, devices=devices,
        events=events, metrics=metrics, audit=audit, lockout=lockout, modbus=links, wamp=wamp,
    )


def _read_modbus(root: Table) -> dict[str, ModbusLinkConfig]:
    """Every ``[modbus.NAME]`` link."""
    links: dict[str, ModbusLinkConfig] = {}
    for name, t in root.tables("modbus"):
        if not _NAME.fullmatch(name):
            t.problem(None, "link name must be an identifier (letters, digits, _)")
        transport = t.string("transport", choices=("tcp", "rtu"))
        host, port = "", None
        baudrate, bytesize, parity, stopbits = 9600, 8, "none", 1
        if transport == "tcp":
            host = t.string("host")
            port = t.integer("port", default=502, low=1, high=65535)
        elif transport == "rtu":
            port = t.string("port")
            baudrate = t.integer("baudrate", default=9600, low=50, high=4_000_000)
            bytesize = t.integer("bytesize", default=8, low=5, high=8)
            parity = t.string("parity", default="even", choices=tuple(PARITY))
            stopbits = t.integer("stopbits", default=1, low=1, high=2)
        wrong = ("baudrate", "bytesize", "parity", "stopbits") if transport == "tcp" else ("host",)
        for key in wrong:
            if t.has(key):
                t.problem(key, f"not used with transport = {transport!r}")
                t.take(key)
        timeout = t.number("timeout", default=1.0, high=60.0)
        poll = t.number("poll_interval", default=1.0, high=3600.0)
        offline_after = t.integer("offline_after", default=3, low=1, high=100)
        backoff_max = t.number("backoff_max", default=10.0, high=3600.0)
        t.finish()
        if None in (transport, host, port, baudrate, bytesize, parity, stopbits, timeout, poll, offline_after,
                    backoff_max):
            continue
        links[name] = ModbusLinkConfig(
            name=name, transport=transport, host=host, port=port, baudrate=baudrate, bytesize=bytesize,
            parity=PARITY[parity], stopbits=stopbits, timeout=timeout, poll_interval=poll,
            offline_after=offline_after, backoff_max=backoff_max,
        )
    return links


def _read_live(root: Table, doc: Document, tokens: tuple[Token, ...]) -> tuple[EventsConfig, MetricsConfig,
                                                                              AuditConfig]:
    t = root.section("events")
    events = EventsConfig(
        buffer=t.integer("buffer", default=1000, low=0, high=1_000_000),
        max_pending_bytes=1024 * t.integer("max_pending_kib", default=256, low=16, high=65536),
    )
    t.finish()
    t = root.section("metrics")
    scrapers = t.strings("tokens", default=())
    for name in scrapers:
        if name not in {tok.name for tok in tokens}:
            t.problem("tokens", f"no token named {name!r} in [auth.tokens]")
    t.finish()
    t = root.section("audit")
    file = t.string("file", default=None)
    if file:
        file = os.path.join(os.path.dirname(os.path.abspath(doc.file)), os.path.expanduser(file))
    audit = AuditConfig(
        file=file or None,
        max_bytes=t.integer("max_bytes", default=10 * 1024 * 1024, low=4096, high=2**40),
        backups=t.integer("backups", default=5, low=0, high=1000),
        fsync=t.boolean("fsync", default=False),
    )
    t.finish()
    return events, MetricsConfig(tokens=tuple(scrapers)), audit


def _read_server(t: Table, doc: Document) -> ServerConfig | None:
    listen = t.string("listen", default=DEFAULT_LISTEN)
    origins = t.strings("allowed_origins", default=())
    for origin in origins or ():
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            t.problem("allowed_origins", f"{origin!r} is not an origin like https://panel.example:8443")
    cert = t.string("tls_cert", default=None)
    key = t.string("tls_key", default=None)
    if (cert is None) != (key is None):
        t.problem("tls_cert" if cert is None else "tls_key", "tls_cert and tls_key go together")
    base = os.path.dirname(os.path.abspath(doc.file))
    tls = None
    if cert and key:
        tls = (os.path.join(base, cert), os.path.join(base, key))
        for field_name, path in zip(("tls_cert", "tls_key"), tls, strict=True):
            if not os.path.isfile(path):
                t.problem(field_name, f"no such file: {path}")
    values = {
        "max_frame_bytes": t.integer("max_frame_bytes", default=65536, low=1024, high=16 * 1024 * 1024),
        "max_batch": t.integer("max_batch", default=50, low=1, high=1000),
        "auth_timeout": t.number("auth_timeout", default=10.0, high=3600.0),
        "max_connections": t.integer("max_connections", default=200, low=1, high=100000),
        "max_connections_per_address": t.integer("max_connections_per_address", default=20, low=1, high=100000),
        "request_key_window": t.number("request_key_window", default=300.0, high=86400.0),
    }
    t.finish()
    try:
        host, port = parse_listen(listen or DEFAULT_LISTEN)
    except ValueError as exc:
        doc.problem(("server", "listen"), str(exc))
        return None
    if None in values.values():
        return None
    return ServerConfig(host=host, port=port, allowed_origins=tuple(origins or ()), tls=tls, **values)


def _read_auth(t: Table | None) -> tuple[dict[str, Role], tuple[Token, ...], LockoutConfig]:
    roles: dict[str, Role] = {}
    tokens: list[Token] = []
    if t is None:
        return roles, (), LockoutConfig()
    lockout = LockoutConfig(
        slowdown_after=t.integer("slowdown_after", default=3, low=1, high=1000),
        lockout_after=t.integer("lockout_after", default=10, low=1, high=10000),
        lockout_s=t.number("lockout_s", default=60.0, high=86400.0),
    )
    for name, rt in t.tables("roles"):
        allow = rt.strings("allow", default=())
        deny = rt.strings("deny", default=())
        rate = rt.number("rate", default=None, high=100000.0)
        burst = rt.integer("burst", default=None, low=1, high=1000000)
        rt.finish()
        if burst is not None and rate is None:
            rt.problem("burst", "needs a rate")
        for pattern in (*(allow or ()), *(deny or ())):
            if not 0 < len(pattern) <= 128:
                rt.problem("allow", "patterns are 1-128 characters")
        roles[name] = Role(name=name, allow=allow or (), deny=deny or (), rate=rate,
                           burst=burst if burst is not None else (None if rate is None else max(1, int(rate))))
    for name, tt in t.tables("tokens"):
        if not _TOKEN_NAME.fullmatch(name):
            tt.problem(None, "token name must be 1-64 of letters, digits, '.', '_', '-'")
        role = tt.string("role")
        verifier = _read_verifier(tt)
        tt.finish()
        if role is not None and role not in roles:
            tt.problem("role", f"no role named {role!r} in [auth.roles]")
        elif role is not None and verifier is not None:
            tokens.append(Token(name=name, role=role, verifier=verifier))
    t.finish()
    return roles, tuple(tokens), lockout


def _read_verifier(tt: Table) -> SecretHash | None:
    """A token's secret: ``hash`` (from ``pictl token hash``) or ``secret_file``, never the secret."""
    if tt.has("secret"):
        tt.string("secret")
        tt.problem("secret", "secrets do not belong in the config: use hash = \"...\" "
                   "(`pictl token create NAME`) or secret_file = \"PATH\"")
        return None
    given = [k for k in ("hash", "secret_file") if tt.has(k)]
    if len(given) != 1:
        tt.problem(None, "a token needs exactly one of hash or secret_file")
        for key in given:
            tt.string(key)
        return None
    if given[0] == "hash":
        text = tt.string("hash")
        if text is None:
            return None
        try:
            return parse_hash(text)
        except ValueError as exc:
            tt.problem("hash", str(exc))
            return None
    path = tt.string("secret_file")
    if path is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(tt.doc.file)), os.path.expanduser(path))
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        tt.problem("secret_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    if info.st_mode & 0o077:
        tt.problem("secret_file", f"{path} is readable by group or others: chmod 600 it")
        return None
    if len(secret) < MIN_SECRET_LENGTH:
        tt.problem("secret_file", f"the secret in {path} is shorter than {MIN_SECRET_LENGTH} characters")
        return None
    # A salt derived from the path keeps the in-memory hash equal across reloads of an unchanged
    # file, so a reload does not mistake it for a new token (and close its sessions).
    return hash_secret(secret, salt=hashlib.sha256(path.encode()).digest()[:16])
