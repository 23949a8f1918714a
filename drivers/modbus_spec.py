"""What a config says about Modbus: links, addresses, points; and how values become words.

Owned by the Modbus driver (:mod:`drivers.modbus`); read from the config's
tables through :class:`drivers.base.SpecTable`, so every problem carries its
``FILE:LINE``. Pure: no I/O, no pymodbus.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import Quantity, SpecTable

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODBUS_TABLES = ("coil", "discrete", "holding", "input")  # the four Modbus data tables
MODBUS_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}  # registers per value
_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}
PARITY = {"none": "N", "even": "E", "odd": "O"}
MAX_GAP = 32  # most unused registers a meter's poll may read across (a read is at most 125 registers)


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

    bus_kind = "modbus"  # the driver that reads it

    @property
    def bus_key(self) -> str:
        """The key of the bus that carries it (:attr:`drivers.modbus.ModbusLink.key`)."""
        return f"modbus:{self.link}"


TYPE_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1)}



# -- values <-> words ---------------------------------------------------------------------------
def describe(at: Any) -> str:
    """``holding 3 (device 1)``: how an address appears in evidence and logs."""
    return f"{at.table} {at.address} (device {at.device_id})"


def decode(at: Any, raw: list[Any]) -> Any:
    """The engineering value of *raw* (bits or 16-bit words) at address spec *at*.

    A float register that holds NaN or an infinity decodes to it (callers decide; see
    :func:`is_number`): scale and offset leave such a value as it is.
    """
    if at.type == "bool":
        return bool(raw[0])
    words = list(raw[: at.width])
    if at.word_order == "little":
        words.reverse()  # lowest word first on the wire: put the high word first for struct
    number: float = struct.unpack(_FORMATS[at.type], struct.pack(f">{len(words)}H", *words))[0]
    if (at.scale == 1.0 and at.offset == 0.0) or not math.isfinite(number):
        return number
    return round(number * at.scale + at.offset, 9)


def is_number(value: Any) -> bool:
    """A value worth publishing: a bit, or a finite number (a meter's NaN or inf is not)."""
    return isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value))


def encode(at: Any, value: Any) -> list[int] | bool:
    """Words (or a bit) that make *at* read *value*; ValueError when it does not fit."""
    if at.type == "bool":
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    raw = (value - at.offset) / at.scale
    if at.type in ("float32", "float64"):
        try:
            packed = struct.pack(_FORMATS[at.type], raw)
        except OverflowError:
            raise ValueError(f"{value:g} does not fit a {at.type} register group") from None
    else:
        low, high = TYPE_RANGE[at.type]
        raw = round(raw)
        if not low <= raw <= high:
            raise ValueError(f"{value:g} is {raw} in the register, outside {at.type} ({low}..{high})")
        packed = struct.pack(_FORMATS[at.type], raw)
    words = list(struct.unpack(f">{len(packed) // 2}H", packed))
    return words if at.word_order == "big" else words[::-1]


# -- reading the config --------------------------------------------------------------------------
def read_link(name: str, t: SpecTable) -> ModbusLinkConfig | None:
    """One ``[modbus.NAME]`` link: TCP host and port, or an RTU serial port and its framing."""
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
    if port is None or None in (transport, host, baudrate, bytesize, parity, stopbits, timeout, poll,
                                offline_after, backoff_max):
        return None
    return ModbusLinkConfig(
        name=name, transport=transport, host=host, port=port, baudrate=baudrate, bytesize=bytesize,
        parity=PARITY[parity], stopbits=stopbits, timeout=timeout, poll_interval=poll,
        offline_after=offline_after, backoff_max=backoff_max,
    )


def read_address(t: SpecTable, tables: tuple[str, ...], device_id: int | None = None) -> ModbusAddress | None:
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
    if table in ("coil", "discrete"):
        for k in ("type", "scale", "offset", "word_order"):
            if t.has(k):
                t.problem(k, f"only for registers (holding, input), not a {table}")
                t.take(k)
        if address is None or dev is None:
            return None
        return ModbusAddress(table=table, address=address, device_id=dev, type="bool", word_order="big",
                             scale=1.0, offset=0.0)
    return _register(t, table, table, address, dev)


def _register(t: SpecTable, table: str, key: str, address: int | None, dev: int | None) -> ModbusAddress | None:
    """The number a register group holds: ``type``, ``word_order``, ``scale``, ``offset``."""
    kind = t.string("type", default="uint16", choices=tuple(MODBUS_TYPES))
    scale = t.number("scale", default=1.0, low=-math.inf)
    offset = t.number("offset", default=0.0, low=-math.inf)
    order = t.string("word_order", default="big", choices=("big", "little"))
    if scale == 0:
        t.problem("scale", "must not be 0")
        scale = None
    if kind in MODBUS_TYPES and address is not None and address + MODBUS_TYPES[kind] - 1 > 65535:
        t.problem(key, f"a {kind} at {address} runs past the last address 65535")
        address = None
    if address is None or scale is None or dev is None or None in (kind, offset, order):
        return None
    return ModbusAddress(table=table, address=address, device_id=dev, type=kind, word_order=order,
                         scale=scale, offset=offset)


def _link(t: SpecTable, links: Mapping[str, ModbusLinkConfig]) -> str | None:
    link = t.string("modbus")
    if link is not None and link not in links:
        known = ", ".join(sorted(links)) or "none defined"
        t.problem("modbus", f"no Modbus link named {link!r} (links: {known}; define [modbus.{link}])")
        return None
    return link


def read_point(t: SpecTable, links: Mapping[str, ModbusLinkConfig], writable: bool) -> ModbusPointSpec | None:
    """``{ modbus = "LINK", coil | discrete | holding | input = ADDRESS, ..., verify = { ... } }``."""
    link = _link(t, links)
    at = read_address(t, ("coil", "holding") if writable else MODBUS_TABLES)
    verify = verify_on = verify_off = None
    v = t.table("verify") if writable else None
    if not writable and t.has("verify"):
        t.problem("verify", "only outputs are verified")
        t.take("verify")
    if v is not None:
        verify = read_address(v, MODBUS_TABLES, device_id=at.device_id if at else None)
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


# -- a sensor's values (a meter) -----------------------------------------------------------------
@dataclass(frozen=True)
class ModbusValue:
    """One named value of a Modbus sensor: where it is, and what it measures."""

    at: ModbusAddress
    quantity: Quantity


@dataclass(frozen=True)
class ModbusSensorSpec:
    """Registers of one device on a link, read as a sensor's named values (an energy meter)."""

    link: str  # name of a [modbus.NAME] link
    device_id: int  # the meter's unit id
    values: dict[str, ModbusValue]  # value name -> its register group, in the config's order
    max_gap: int = 0  # unused registers a poll may read across to merge two values into one request

    bus_kind = "modbus"  # the driver that reads it

    @property
    def bus_key(self) -> str:
        return f"modbus:{self.link}"

    @property
    def quantities(self) -> dict[str, Quantity]:
        return {name: value.quantity for name, value in self.values.items()}


def read_sensor(t: SpecTable, links: Mapping[str, ModbusLinkConfig]) -> ModbusSensorSpec | None:
    """``modbus = "LINK"``, ``device_id``, ``max_gap``, and one table per value under ``values``:
    ``register``, ``table`` (input/holding), ``type``, ``word_order``, ``scale``, ``offset``, ``unit``,
    ``device_class``, ``state_class``."""
    link = _link(t, links)
    dev = t.integer("device_id", default=1, low=0, high=255)
    max_gap = t.integer("max_gap", default=0, low=0, high=MAX_GAP)
    tables = t.table("values", required=True)
    values: dict[str, ModbusValue] = {}
    bad = tables is None
    if tables is not None:
        if not tables.data:
            tables.problem(None, "needs at least one value, e.g. [devices.NAME.values.energy] with register = 342")
            bad = True
        for name in list(tables.data):
            v = tables.table(name)
            value = None if v is None else _read_value(v, dev)
            if not _NAME.fullmatch(name):
                tables.problem(name, "value name must be an identifier (letters, digits, _)")
            elif value is not None:
                clash = next((other for other, seen in values.items() if _overlap(seen.at, value.at)), None)
                if clash is not None:
                    tables.problem(name, f"its registers overlap those of {clash!r}")
                values[name] = value
                continue
            bad = True
    if link is None or dev is None or max_gap is None or bad:
        return None
    return ModbusSensorSpec(link=link, device_id=dev, values=values, max_gap=max_gap)


def _read_value(v: SpecTable, dev: int | None) -> ModbusValue | None:
    table = v.string("table", choices=("input", "holding"))
    address = v.integer("register", low=0, high=65535)
    at = _register(v, table or "input", "register", address, dev)
    unit = v.string("unit", default="")
    device_class = v.string("device_class", default=None)
    state_class = v.string("state_class", default=None)
    v.finish()
    if at is None or table is None or unit is None:
        return None
    return ModbusValue(at, Quantity(unit, device_class, state_class))


def _overlap(a: ModbusAddress, b: ModbusAddress) -> bool:
    return a.table == b.table and a.address < b.address + b.width and b.address < a.address + a.width
