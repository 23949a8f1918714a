"""The buses pictl knows, by the key that selects them: one line per bus.

A point in the config names its driver by a key (``{ gpio = 17 }``,
``{ modbus = "plc", coil = 3 }``); a bus shared by several devices has its own
config sections (``[modbus.plc]``). A sensor names the source of its readings
by a key of its own table (``port = ...``, ``modbus = "plc"``,
``onewire = "28-..."``). A new bus is a driver module with its spec, its parser
and its :class:`drivers.base.Bus`, a far side in ``drivers/sim/``, and a line
here and in :data:`drivers.sim.farsides.FAR_SIDES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers import gpio, modbus, modbus_spec, onewire, serial_sensor
from drivers.base import Bus, PointSpec, ReadingSource, SpecTable


@dataclass
class SpecContext:
    """What point readers share while one config is read."""

    pins: gpio.PinClaims = field(default_factory=gpio.PinClaims)  # GPIO lines claimed so far
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # bus kind -> link name -> link config


@dataclass(frozen=True)
class PointDriver:
    """How a point table naming this driver's key becomes a spec."""

    hint: str  # how a point names it, for error messages: 'gpio = PIN'
    read_output: Callable[[SpecTable, SpecContext], PointSpec | None]
    read_input: Callable[[SpecTable, SpecContext], PointSpec | None]


@dataclass(frozen=True)
class LinkDriver:
    """A bus shared by devices, configured in its own ``[KIND.NAME]`` sections."""

    read: Callable[[str, SpecTable], Any]  # one section -> its link config, or None after a problem
    open: Callable[[Any], Bus]  # a link config -> its bus (not started)


POINT_DRIVERS: dict[str, PointDriver] = {
    "gpio": PointDriver("gpio = PIN", lambda t, ctx: gpio.read_output(t, ctx.pins),
                        lambda t, ctx: gpio.read_input(t, ctx.pins)),
    "modbus": PointDriver('modbus = "LINK"',
                          lambda t, ctx: modbus_spec.read_point(t, ctx.links.get("modbus", {}), writable=True),
                          lambda t, ctx: modbus_spec.read_point(t, ctx.links.get("modbus", {}), writable=False)),
}

LINK_DRIVERS: dict[str, LinkDriver] = {
    "modbus": LinkDriver(modbus_spec.read_link, modbus.ModbusLink),
}


@dataclass(frozen=True)
class SourceDriver:
    """Where a sensor's readings come from, chosen by a key of the sensor's own table.

    Either the source is a bus made for the one device (``own_bus``: a serial port, a 1-Wire
    thermometer; the daemon starts it, and stops it with its device), or it lives on a shared
    link that makes it (``own_bus`` None: the link's ``source(device, spec)``, a Modbus meter).
    """

    key: str  # the sensor table's key that selects it: "port", "modbus", "onewire"
    hint: str  # how a sensor names it, for error messages
    read: Callable[[SpecTable, SpecContext], PointSpec | None]  # the sensor's table -> its source spec
    own_bus: Callable[[str, Any], ReadingSource] | None = None  # (device, spec) -> a device-owned bus


SOURCE_DRIVERS: dict[str, SourceDriver] = {  # by the spec's bus_kind
    "serial": SourceDriver("port", 'port = "/dev/serial/by-id/..."', lambda t, ctx: serial_sensor.read_sensor(t),
                           serial_sensor.SerialSensor),
    "modbus": SourceDriver("modbus", 'modbus = "LINK"',
                           lambda t, ctx: modbus_spec.read_sensor(t, ctx.links.get("modbus", {}))),
    "onewire": SourceDriver("onewire", 'onewire = "28-..."', lambda t, ctx: onewire.read_sensor(t),
                            onewire.OneWireThermometer),
}
